# validate.ps1 - runs the rows of docs/windows-validation.md that need no second machine and
# writes one report file to send back (every command, its exit code and its output).
# Run from an elevated PowerShell in the package folder, after install.ps1, with the SHA-1
# thumbprint of a localhost certificate in LocalMachine\My that is trusted as a root:
#   .\validate.ps1 -Thumbprint <hex> [-Report validate-report.txt] [-Internet]
# -Internet adds the rows that connect to example.com:443 (W6, W13, W15).
# Start DebugView (Capture Kernel) first and save its log next to the report: several rows are
# read there.
param(
    [Parameter(Mandatory = $true)] [string] $Thumbprint,
    [string] $Report = "validate-report.txt",
    [switch] $Internet
)
$ErrorActionPreference = "Stop"
$here = Split-Path -Parent $MyInvocation.MyCommand.Path
$exe = Join-Path $here "wsktls.exe"
. (Join-Path $here "common.ps1")

Assert-Administrator

$lines = New-Object System.Collections.Generic.List[string]
function Note([string] $text) { $lines.Add($text); Write-Host $text }

# Runs wsktls.exe with $Arguments (and $InputText on stdin), records exit code and output.
function Run([string] $Row, [string[]] $Arguments, [string] $InputText = "") {
    Note ""
    Note "== ${Row}: wsktls.exe $($Arguments -join ' ')"
    $info = New-Object System.Diagnostics.ProcessStartInfo
    $info.FileName = $exe
    $info.Arguments = ($Arguments | ForEach-Object { if ($_ -match "\s") { "`"$_`"" } else { $_ } }) -join " "
    $info.UseShellExecute = $false
    $info.RedirectStandardInput = $true
    $info.RedirectStandardOutput = $true
    $info.RedirectStandardError = $true
    $process = [System.Diagnostics.Process]::Start($info)
    if ($InputText) { $process.StandardInput.Write($InputText) }
    $process.StandardInput.Close()
    $stdout = $process.StandardOutput.ReadToEndAsync()
    $stderr = $process.StandardError.ReadToEndAsync()
    if (-not $process.WaitForExit(120000)) {
        $process.Kill()
        Note "   (killed after 120 s)"
    }
    Note "   exit code $($process.ExitCode)"
    foreach ($text in $stdout.Result, $stderr.Result) {
        foreach ($line in ($text -split "`r?`n")) { if ($line) { Note "   $line" } }
    }
    return $process.ExitCode
}

# Stops and starts the service (it reads its registry parameters at load).
function Restart-Driver {
    sc.exe stop wsktls | Out-Null
    if (-not (Wait-Until { (Get-Service wsktls).Status -eq "Stopped" })) { Note "   wsktls did not stop" }
    sc.exe start wsktls | Out-Null
    if (-not (Wait-Until { (Get-Service wsktls).Status -eq "Running" })) { Note "   wsktls did not start" }
}

# A server for one connection, in the background; returns (process, port).
function Start-Server([string[]] $Arguments) {
    $out = Join-Path $env:TEMP "wsktls-validate-serve.out"
    $err = Join-Path $env:TEMP "wsktls-validate-serve.err"
    $process = Start-Process -FilePath $exe -ArgumentList $Arguments -PassThru -NoNewWindow `
        -RedirectStandardOutput $out -RedirectStandardError $err
    $deadline = (Get-Date).AddSeconds(30)
    while ((Get-Date) -lt $deadline) {
        $first = Get-Content $out -ErrorAction SilentlyContinue | Select-Object -First 1
        if ($first -match "listening on .*:(\d+)$") { return @($process, [int] $Matches[1]) }
        if ($process.HasExited) { break }
        Start-Sleep -Milliseconds 200
    }
    Note "   serve did not start: $(Get-Content $err -Raw -ErrorAction SilentlyContinue)"
    return @($process, 0)
}

Note "wsktls validation report, $(Get-Date -Format o)"
Note "Windows $([Environment]::OSVersion.Version) (build $([Environment]::OSVersion.Version.Build))"
Note "package: $((Get-Item (Join-Path $here 'wsktls.sys')).VersionInfo.FileVersion)"

# W1, W2: the driver is running (every import resolved, the KMDF bind accepted).
Note ""
Note "== W1/W2: sc.exe query wsktls"
(sc.exe query wsktls) | ForEach-Object { if ($_) { Note "   $_" } }

# W3, W11 (and W8 under Driver Verifier): both protocols end to end in the kernel.
Run "W3/W8/W11" @("selftest", "--thumbprint", $Thumbprint) | Out-Null

# W4: an insecure client (empty target name) against the driver's own server.
$server, $port = Start-Server @("serve", "--port", "0", "--thumbprint", $Thumbprint, "--echo", "--max-conns", "1")
if ($port) {
    Run "W4" @("connect", "127.0.0.1:$port", "--insecure") "w4 echo`n" | Out-Null
    $server.WaitForExit(30000) | Out-Null
}

# W12: a graceful end after stdin ends, against serve --echo (the client validates by name).
$server, $port = Start-Server @("serve", "--port", "0", "--thumbprint", $Thumbprint, "--echo", "--max-conns", "1")
if ($port) {
    Run "W12" @("connect", "localhost:$port") "w12 echo`n" | Out-Null
    $server.WaitForExit(30000) | Out-Null
}

if ($Internet) {
    # W6, W13, W15: a public TLS 1.3 server with tickets and a real chain.
    Run "W6/W13/W15" @("connect", "example.com:443", "--tls13", "--alpn", "http/1.1") "GET / HTTP/1.1`r`nHost: example.com`r`nConnection: close`r`n`r`n" | Out-Null
}

# W17: the limits the registry sets are read at load.
Note ""
Note "== W17: MaxConnections=100 under the service's Parameters key, then restart"
$parameters = "HKLM:\SYSTEM\CurrentControlSet\Services\wsktls\Parameters"
$hadKey = Test-Path $parameters
New-Item -Path $parameters -Force | Out-Null
New-ItemProperty -Path $parameters -Name MaxConnections -PropertyType DWord -Value 100 -Force | Out-Null
Restart-Driver
Run "W17" @("stats") | Out-Null
Remove-ItemProperty -Path $parameters -Name MaxConnections
if (-not $hadKey) { Remove-Item -Path $parameters }
Restart-Driver

$path = Join-Path $here $Report
$lines | Set-Content -Path $path -Encoding ASCII
Write-Host ""
Write-Host "report written to ${path}: send it back with DebugView's log"
