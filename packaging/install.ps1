# install.ps1 - installs the wsktls test-signed kernel driver on a test machine with sc.exe.
# Run from an elevated PowerShell in the package folder:  .\install.ps1 [-NoCertificate]
# Needs Windows 10 2004 (build 19041) or later, test signing on (bcdedit /set testsigning on,
# then reboot) and Secure Boot off.
#
# Why sc.exe and not the INF: wsktls is a primitive (non-PnP) driver. Since Windows 10 1903 an
# INF installed with InstallHinfSection goes through the driver store, which requires a signed
# catalog (.cat), and no Linux tool makes one (Microsoft Learn: "Creating a primitive driver",
# "InstallHinfSection"). wsktls.inf stays in the package for inf2cat/signtool on Windows.
param([switch] $NoCertificate)
$ErrorActionPreference = "Stop"
$here = Split-Path -Parent $MyInvocation.MyCommand.Path

. (Join-Path $here "common.ps1")

Assert-Administrator
$build = [Environment]::OSVersion.Version.Build
if ($build -lt 19041) {
    throw "Windows build ${build}: wsktls needs Windows 10 2004 (build 19041) or later (ExAllocatePool2)"
}
# The boot options the loader was started with (not localized, unlike bcdedit's output).
$options = (Get-ItemProperty "HKLM:\SYSTEM\CurrentControlSet\Control" -Name SystemStartOptions).SystemStartOptions
if ($options -notmatch "TESTSIGNING") {
    Write-Warning "test signing is off: run 'bcdedit /set testsigning on' and reboot, or the driver will not load (577)"
}

if (-not $NoCertificate) {
    # The package's test certificate must be trusted as a root and as a publisher.
    $cer = Join-Path $here "wsktls.cer"
    Import-Certificate -FilePath $cer -CertStoreLocation Cert:\LocalMachine\Root | Out-Null
    Import-Certificate -FilePath $cer -CertStoreLocation Cert:\LocalMachine\TrustedPublisher | Out-Null
    Write-Host "trusted the test certificate (LocalMachine Root and TrustedPublisher)"
}

if (Get-Service -Name wsktls -ErrorAction SilentlyContinue) {
    Write-Host "a wsktls service exists already: stopping and deleting it first"
    sc.exe stop wsktls | Out-Null
    if ($LASTEXITCODE -ne 0 -and $LASTEXITCODE -ne 1062) { throw "sc stop failed: $(Explain $LASTEXITCODE)" }
    if (-not (Wait-Until { (Get-Service wsktls).Status -eq "Stopped" })) {
        throw "wsktls did not stop within 30 s (its unload waits for every connection to release)"
    }
    sc.exe delete wsktls | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "sc delete failed: $(Explain $LASTEXITCODE)" }
    if (-not (Wait-Until { -not (Get-Service -Name wsktls -ErrorAction SilentlyContinue) })) {
        throw "the old service is still there: $(Explain 1072)"
    }
}

$target = Join-Path $env:SystemRoot "System32\drivers\wsktls.sys"
Copy-Item (Join-Path $here "wsktls.sys") $target -Force
sc.exe create wsktls type= kernel start= demand error= normal binPath= "System32\drivers\wsktls.sys" DisplayName= "wsktls kernel TLS" | Out-Host
if ($LASTEXITCODE -ne 0) { throw "sc create failed: $(Explain $LASTEXITCODE)" }

sc.exe start wsktls | Out-Host
if ($LASTEXITCODE -ne 0) { throw "sc start failed: $(Explain $LASTEXITCODE)" }
if (-not (Wait-Until { (Get-Service wsktls).Status -eq "Running" })) {
    throw "wsktls did not reach RUNNING within 30 s (see DebugView)"
}
Write-Host "wsktls is running; try: .\wsktls.exe selftest --thumbprint <SHA-1 of a localhost certificate in LocalMachine\My>"
