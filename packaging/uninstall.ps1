# uninstall.ps1 — stops and removes the wsktls driver and, unless -KeepCertificate, the test certificate.
# Run from an elevated PowerShell in the package folder:  .\uninstall.ps1 [-KeepCertificate]
param([switch] $KeepCertificate)
$ErrorActionPreference = "Continue"
$here = Split-Path -Parent $MyInvocation.MyCommand.Path

if (Get-Service -Name wsktls -ErrorAction SilentlyContinue) {
    sc.exe stop wsktls | Out-Host
    sc.exe delete wsktls | Out-Host
}
$target = Join-Path $env:SystemRoot "System32\drivers\wsktls.sys"
if (Test-Path $target) {
    Remove-Item $target -Force -ErrorAction SilentlyContinue
    if (Test-Path $target) { Write-Warning "$target is still in use; it goes after a reboot" }
}

if (-not $KeepCertificate) {
    $cer = New-Object Security.Cryptography.X509Certificates.X509Certificate2 (Join-Path $here "wsktls.cer")
    foreach ($store in "Root", "TrustedPublisher") {
        Get-ChildItem "Cert:\LocalMachine\$store" | Where-Object { $_.Thumbprint -eq $cer.Thumbprint } | Remove-Item
    }
    Write-Host "removed the test certificate $($cer.Thumbprint)"
}
Write-Host "wsktls removed"
