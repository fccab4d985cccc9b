# common.ps1 - what the package's scripts share; dot-sourced by install.ps1, uninstall.ps1 and
# validate.ps1 (keep it next to them).

# sc.exe exit codes (Win32 errors) the scripts explain.
$codes = @{
    577  = "the signature was rejected: test signing is off, Secure Boot is on, or the test certificate is not trusted";
    127  = "a kernel import is missing: this Windows build is too old for the driver";
    998  = "the image has bad section attributes";
    1060 = "the service does not exist";
    1061 = "the service cannot take control requests now (it is starting or stopping): wait and retry";
    1062 = "the service is not running";
    1072 = "the service is marked for deletion: a handle to it or to \\.\WskTls is still open (close wsktls.exe, services.msc, Process Explorer) or reboot";
    1073 = "the service exists already";
}

# "1072 = ..." for an sc.exe exit code.
function Explain([int] $code) {
    if ($codes.ContainsKey($code)) { "$code = $($codes[$code])" } else { "error $code" }
}

# Waits (polling, at most $Seconds) until $Test returns true; false on timeout.
function Wait-Until([scriptblock] $Test, [int] $Seconds = 30) {
    $deadline = (Get-Date).AddSeconds($Seconds)
    while ((Get-Date) -lt $deadline) {
        if (& $Test) { return $true }
        Start-Sleep -Milliseconds 200
    }
    return $false
}

# Stops unless this PowerShell runs elevated.
function Assert-Administrator {
    $principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
    if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
        throw "run this script from an elevated (Administrator) PowerShell"
    }
}
