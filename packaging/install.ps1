# install.ps1 — installs the wsktls test-signed kernel driver on a test machine.
# Run from an elevated PowerShell in the package folder:  .\install.ps1 [-Method Sc|Inf] [-NoCertificate]
# Needs test signing (bcdedit /set testsigning on, then reboot) with Secure Boot off.
param(
    [ValidateSet("Sc", "Inf")] [string] $Method = "Sc",
    [switch] $NoCertificate
)
$ErrorActionPreference = "Stop"
$here = Split-Path -Parent $MyInvocation.MyCommand.Path

$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    throw "run this script from an elevated (Administrator) PowerShell"
}
if (-not ((bcdedit /enum "{current}") -match "testsigning\s+Yes")) {
    Write-Warning "test signing is off: run 'bcdedit /set testsigning on' and reboot, or the driver will not load (StartService error 577)"
}

if (-not $NoCertificate) {
    # The package's test certificate must be trusted as a root and as a publisher.
    $cer = Join-Path $here "wsktls.cer"
    Import-Certificate -FilePath $cer -CertStoreLocation Cert:\LocalMachine\Root | Out-Null
    Import-Certificate -FilePath $cer -CertStoreLocation Cert:\LocalMachine\TrustedPublisher | Out-Null
    Write-Host "trusted the test certificate (LocalMachine Root and TrustedPublisher)"
}

$existing = Get-Service -Name wsktls -ErrorAction SilentlyContinue
if ($existing) {
    Write-Host "a wsktls service exists already: stopping and deleting it first"
    sc.exe stop wsktls | Out-Null
    sc.exe delete wsktls | Out-Null
    Start-Sleep -Seconds 1
}

$target = Join-Path $env:SystemRoot "System32\drivers\wsktls.sys"
if ($Method -eq "Inf") {
    # DefaultInstall of a non-PnP INF: copies wsktls.sys to System32\drivers and adds the service.
    $inf = Join-Path $here "wsktls.inf"
    & rundll32.exe setupapi.dll,InstallHinfSection DefaultInstall.NTamd64 132 $inf
    Start-Sleep -Seconds 2
    if (-not (Get-Service -Name wsktls -ErrorAction SilentlyContinue)) {
        throw "the INF install did not create the service (see C:\Windows\INF\setupapi.app.log); try -Method Sc"
    }
} else {
    Copy-Item (Join-Path $here "wsktls.sys") $target -Force
    sc.exe create wsktls type= kernel start= demand error= normal binPath= "System32\drivers\wsktls.sys" DisplayName= "wsktls kernel TLS" | Out-Host
    if ($LASTEXITCODE -ne 0) { throw "sc create failed ($LASTEXITCODE)" }
}

sc.exe start wsktls | Out-Host
if ($LASTEXITCODE -ne 0) {
    throw "sc start failed ($LASTEXITCODE): 577 = signature rejected (test signing off or certificate not trusted), 127 = a missing kernel import, 998 = bad section attributes"
}
Write-Host "wsktls is running; try: .\wsktls.exe selftest --thumbprint <SHA-1 of a localhost certificate in LocalMachine\My>"
