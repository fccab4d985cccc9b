# uninstall.ps1 - stops and removes the wsktls driver, undoes what the package's steps set
# (Driver Verifier for wsktls.sys, the IHVDRIVER debug print filter) and, unless
# -KeepCertificate, removes the test certificate. Says what it really removed.
# Run from an elevated PowerShell in the package folder:  .\uninstall.ps1 [-KeepCertificate]
param([switch] $KeepCertificate)
$ErrorActionPreference = "Stop"
$here = Split-Path -Parent $MyInvocation.MyCommand.Path

. (Join-Path $here "common.ps1")

Assert-Administrator
$removed = @()

if (Get-Service -Name wsktls -ErrorAction SilentlyContinue) {
    sc.exe stop wsktls | Out-Host
    if ($LASTEXITCODE -ne 0 -and $LASTEXITCODE -ne 1062) { throw "sc stop failed: $(Explain $LASTEXITCODE)" }
    if (-not (Wait-Until { (Get-Service wsktls).Status -eq "Stopped" })) {
        throw "wsktls did not stop within 30 s (its unload waits for every connection to release)"
    }
    sc.exe delete wsktls | Out-Host
    if ($LASTEXITCODE -ne 0) { throw "sc delete failed: $(Explain $LASTEXITCODE)" }
    if (Wait-Until { -not (Get-Service -Name wsktls -ErrorAction SilentlyContinue) }) {
        $removed += "the wsktls service"
    } else {
        Write-Warning "the service is marked for deletion: $(Explain 1072)"
    }
}
$target = Join-Path $env:SystemRoot "System32\drivers\wsktls.sys"
if (Test-Path $target) {
    Remove-Item $target -Force -ErrorAction SilentlyContinue
    if (Test-Path $target) { Write-Warning "$target is still in use; delete it after a reboot" }
    else { $removed += $target }
}

# Driver Verifier: drop wsktls.sys from the verified drivers (docs/windows.md step 2.3).
$mm = "HKLM:\SYSTEM\CurrentControlSet\Control\Session Manager\Memory Management"
$verified = (Get-ItemProperty $mm -Name VerifyDrivers -ErrorAction SilentlyContinue).VerifyDrivers
if ($verified -and ($verified -split "\s+") -contains "wsktls.sys") {
    $rest = (($verified -split "\s+") | Where-Object { $_ -and $_ -ne "wsktls.sys" }) -join " "
    if ($rest) { Set-ItemProperty $mm -Name VerifyDrivers -Value $rest }
    else { verifier.exe /reset | Out-Null }
    $removed += "Driver Verifier for wsktls.sys (takes effect after a reboot)"
}
# The debug print filter the docs told to set.
$filter = "HKLM:\SYSTEM\CurrentControlSet\Control\Session Manager\Debug Print Filter"
if (Get-ItemProperty $filter -Name IHVDRIVER -ErrorAction SilentlyContinue) {
    Remove-ItemProperty $filter -Name IHVDRIVER
    $removed += "the IHVDRIVER debug print filter"
}

if (-not $KeepCertificate) {
    $cer = New-Object Security.Cryptography.X509Certificates.X509Certificate2 (Join-Path $here "wsktls.cer")
    foreach ($store in "Root", "TrustedPublisher") {
        $found = Get-ChildItem "Cert:\LocalMachine\$store" | Where-Object { $_.Thumbprint -eq $cer.Thumbprint }
        if ($found) {
            $found | Remove-Item
            $removed += "the test certificate $($cer.Thumbprint) from LocalMachine\$store"
        }
    }
}
if ($removed.Count -eq 0) { Write-Host "nothing of wsktls was installed" }
else { $removed | ForEach-Object { Write-Host "removed $_" } }
