//! x64 sizes and field offsets of every ABI struct, asserted at compile time and listed in
//! [`LAYOUTS`] so a test can compare them with an independent C compiler's view (clang over
//! Debian's mingw-w64 headers, through bindgen).

use core::mem::{offset_of, size_of};

use crate::io::*;
use crate::ktimer::*;
use crate::ntdef::*;
use crate::schannel::*;
use crate::sspi::*;
use crate::wdf::types::*;
use crate::wsk::*;

/// The layout ksys declares for one struct.
#[derive(Debug)]
pub struct StructLayout {
    /// Rust name in ksys.
    pub name: &'static str,
    /// C struct tag in the Windows headers (what bindgen names it), e.g. `_SecBuffer`.
    pub c_tag: &'static str,
    /// Size in bytes.
    pub size: usize,
    /// (field, offset) pairs; nested fields are written `Outer.Inner`.
    pub fields: &'static [(&'static str, usize)],
}

macro_rules! layouts {
    ($( $ty:ident as $tag:literal = $size:literal { $( $($field:ident).+ @ $offset:literal ),* $(,)? } )*) => {
        $(
            const _: () = assert!(size_of::<$ty>() == $size, concat!("size of ", stringify!($ty)));
            $( const _: () = assert!(offset_of!($ty, $($field).+) == $offset,
                concat!("offset of ", stringify!($ty), ".", stringify!($($field).+))); )*
        )*

        /// Every asserted struct layout.
        pub static LAYOUTS: &[StructLayout] = &[
            $( StructLayout {
                name: stringify!($ty),
                c_tag: $tag,
                size: $size,
                fields: &[ $( (stringify!($($field).+), $offset) ),* ],
            }, )*
        ];
    };
}

layouts! {
    UNICODE_STRING as "_UNICODE_STRING" = 16 { Length @ 0, MaximumLength @ 2, Buffer @ 8 }
    RTL_OSVERSIONINFOW as "_OSVERSIONINFOW" = 276 {
        dwOSVersionInfoSize @ 0, dwMajorVersion @ 4, dwMinorVersion @ 8, dwBuildNumber @ 12,
        dwPlatformId @ 16, szCSDVersion @ 20
    }
    LIST_ENTRY as "_LIST_ENTRY" = 16 { Flink @ 0, Blink @ 8 }
    GUID as "_GUID" = 16 { Data1 @ 0, Data2 @ 4, Data3 @ 6, Data4 @ 8 }
    IO_STATUS_BLOCK as "_IO_STATUS_BLOCK" = 16 { Status @ 0, Information @ 8 }
    IRP as "_IRP" = 0xD0 {
        Type @ 0, Size @ 2, MdlAddress @ 0x08, Flags @ 0x10, AssociatedIrp @ 0x18, ThreadListEntry @ 0x20,
        IoStatus @ 0x30, RequestorMode @ 0x40, PendingReturned @ 0x41, StackCount @ 0x42,
        CurrentLocation @ 0x43, Cancel @ 0x44, CancelIrql @ 0x45, ApcEnvironment @ 0x46,
        AllocationFlags @ 0x47, UserIosb @ 0x48, UserEvent @ 0x50, Overlay @ 0x58, CancelRoutine @ 0x68,
        UserBuffer @ 0x70, Tail @ 0x78, Tail.Thread @ 0x98, Tail.ListEntry @ 0xA8,
        Tail.CurrentStackLocation @ 0xB8, Tail.OriginalFileObject @ 0xC0
    }
    IO_STACK_LOCATION as "_IO_STACK_LOCATION" = 0x48 {
        MajorFunction @ 0, MinorFunction @ 1, Flags @ 2, Control @ 3, Parameters @ 8,
        Parameters.DeviceIoControl.OutputBufferLength @ 0x08, Parameters.DeviceIoControl.InputBufferLength @ 0x10,
        Parameters.DeviceIoControl.IoControlCode @ 0x18, Parameters.DeviceIoControl.Type3InputBuffer @ 0x20,
        DeviceObject @ 0x28, FileObject @ 0x30, CompletionRoutine @ 0x38, Context @ 0x40
    }
    MDL as "_MDL" = 0x30 {
        Next @ 0, Size @ 8, MdlFlags @ 10, Process @ 0x10, MappedSystemVa @ 0x18, StartVa @ 0x20,
        ByteCount @ 0x28, ByteOffset @ 0x2C
    }
    DRIVER_OBJECT as "_DRIVER_OBJECT" = 0x150 {
        Type @ 0, Size @ 2, DeviceObject @ 0x08, Flags @ 0x10, DriverStart @ 0x18, DriverSize @ 0x20,
        DriverSection @ 0x28, DriverExtension @ 0x30, DriverName @ 0x38, HardwareDatabase @ 0x48,
        FastIoDispatch @ 0x50, DriverInit @ 0x58, DriverStartIo @ 0x60, DriverUnload @ 0x68,
        MajorFunction @ 0x70
    }
    DISPATCHER_HEADER as "_DISPATCHER_HEADER" = 0x18 { SignalState @ 4, WaitListHead @ 8 }
    KEVENT as "_KEVENT" = 0x18 { Header @ 0 }
    KTIMER as "_KTIMER" = 0x40 {}
    KDPC as "_KDPC" = 0x40 {}
    SecHandle as "_SecHandle" = 16 { dwLower @ 0, dwUpper @ 8 }
    SecBuffer as "_SecBuffer" = 16 { cbBuffer @ 0, BufferType @ 4, pvBuffer @ 8 }
    SecBufferDesc as "_SecBufferDesc" = 16 { ulVersion @ 0, cBuffers @ 4, pBuffers @ 8 }
    SecPkgContext_StreamSizes as "_SecPkgContext_StreamSizes" = 20 {
        cbHeader @ 0, cbTrailer @ 4, cbMaximumMessage @ 8, cBuffers @ 12, cbBlockSize @ 16
    }
    SecPkgContext_ApplicationProtocol as "_SecPkgContext_ApplicationProtocol" = 264 {
        ProtoNegoStatus @ 0, ProtoNegoExt @ 4, ProtocolIdSize @ 8, ProtocolId @ 9
    }
    SEC_APPLICATION_PROTOCOLS as "_SEC_APPLICATION_PROTOCOLS" = 12 { ProtocolListsSize @ 0, ProtocolLists @ 4 }
    SEC_APPLICATION_PROTOCOL_LIST as "_SEC_APPLICATION_PROTOCOL_LIST" = 8 {
        ProtoNegoExt @ 0, ProtocolListSize @ 4, ProtocolList @ 6
    }
    SCH_CREDENTIALS as "_SCH_CREDENTIALS" = 72 {
        dwVersion @ 0, dwCredFormat @ 4, cCreds @ 8, paCred @ 16, hRootStore @ 24, cMappers @ 32,
        aphMappers @ 40, dwSessionLifespan @ 48, dwFlags @ 52, cTlsParameters @ 56, pTlsParameters @ 64
    }
    TLS_PARAMETERS as "_TLS_PARAMETERS" = 40 {
        cAlpnIds @ 0, rgstrAlpnIds @ 8, grbitDisabledProtocols @ 16, cDisabledCrypto @ 20,
        pDisabledCrypto @ 24, dwFlags @ 32
    }
    CRYPTO_SETTINGS as "_CRYPTO_SETTINGS" = 48 {
        eAlgorithmUsage @ 0, strCngAlgId @ 8, cChainingModes @ 24, rgstrChainingModes @ 32,
        dwMinBitLength @ 40, dwMaxBitLength @ 44
    }
    SCHANNEL_CERT_HASH_STORE as "_SCHANNEL_CERT_HASH_STORE" = 296 {
        dwLength @ 0, dwFlags @ 4, hProv @ 8, ShaHash @ 16, pwszStoreName @ 36
    }
    SCHANNEL_CERT_HASH as "_SCHANNEL_CERT_HASH" = 40 { dwLength @ 0, dwFlags @ 4, hProv @ 8, ShaHash @ 16 }
    SecPkgContext_ConnectionInfo as "_SecPkgContext_ConnectionInfo" = 28 {
        dwProtocol @ 0, aiCipher @ 4, dwCipherStrength @ 8, aiHash @ 12, dwHashStrength @ 16, aiExch @ 20,
        dwExchStrength @ 24
    }
    SecPkgContext_CipherInfo as "_SecPkgContext_CipherInfo" = 680 {
        dwVersion @ 0, dwProtocol @ 4, dwCipherSuite @ 8, dwBaseCipherSuite @ 12, szCipherSuite @ 16,
        szCipher @ 144, dwCipherLen @ 272, dwCipherBlockLen @ 276, szHash @ 280, dwHashLen @ 408,
        szExchange @ 412, dwMinExchangeLen @ 540, dwMaxExchangeLen @ 544, szCertificate @ 548,
        dwKeyType @ 676
    }
    SecPkgContext_Certificates as "_SecPkgContext_Certificates" = 16 {
        cCertificates @ 0, cbCertificateChain @ 4, pbCertificateChain @ 8
    }
    SecPkgCred_ClientCertPolicy as "_SecPkgCred_ClientCertPolicy" = 56 {
        dwFlags @ 0, guidPolicyId @ 4, dwCertFlags @ 20, dwUrlRetrievalTimeout @ 24,
        fCheckRevocationFreshnessTime @ 28, dwRevocationFreshnessTime @ 32, fOmitUsageCheck @ 36,
        pwszSslCtlStoreName @ 40, pwszSslCtlIdentifier @ 48
    }
    SecPkgContext_SessionInfo as "_SecPkgContext_SessionInfo" = 40 { dwFlags @ 0, cbSessionId @ 4, rgbSessionId @ 8 }
    SCHANNEL_ALERT_TOKEN as "_SCHANNEL_ALERT_TOKEN" = 12 { dwTokenType @ 0, dwAlertType @ 4, dwAlertNumber @ 8 }
    SecPkgContext_CertificateValidationResult as "_SecPkgContext_CertificateValidationResult" = 8 {
        dwChainErrorStatus @ 0, hrVerifyChainStatus @ 4
    }
    WSK_CLIENT_DISPATCH as "_WSK_CLIENT_DISPATCH" = 16 { Version @ 0, Reserved @ 2, WskClientEvent @ 8 }
    WSK_CLIENT_NPI as "_WSK_CLIENT_NPI" = 16 { ClientContext @ 0, Dispatch @ 8 }
    WSK_REGISTRATION as "_WSK_REGISTRATION" = 24 {
        ReservedRegistrationState @ 0, ReservedRegistrationContext @ 8, ReservedRegistrationLock @ 16
    }
    WSK_PROVIDER_NPI as "_WSK_PROVIDER_NPI" = 16 { Client @ 0, Dispatch @ 8 }
    WSK_PROVIDER_CHARACTERISTICS as "_WSK_PROVIDER_CHARACTERISTICS" = 4 { HighestVersion @ 0, LowestVersion @ 2 }
    WSK_SOCKET as "_WSK_SOCKET" = 8 { Dispatch @ 0 }
    WSK_BUF as "_WSK_BUF" = 24 { Mdl @ 0, Offset @ 8, Length @ 16 }
    WSK_DATA_INDICATION as "_WSK_DATA_INDICATION" = 32 { Next @ 0, Buffer @ 8 }
    WSK_EVENT_CALLBACK_CONTROL as "_WSK_EVENT_CALLBACK_CONTROL" = 16 { NpiId @ 0, EventMask @ 8 }
    WSK_PROVIDER_DISPATCH as "_WSK_PROVIDER_DISPATCH" = 56 {
        Version @ 0, Reserved @ 2, WskSocket @ 8, WskSocketConnect @ 16, WskControlClient @ 24,
        WskGetAddressInfo @ 32, WskFreeAddressInfo @ 40, WskGetNameInfo @ 48
    }
    WSK_PROVIDER_BASIC_DISPATCH as "_WSK_PROVIDER_BASIC_DISPATCH" = 16 { WskControlSocket @ 0, WskCloseSocket @ 8 }
    WSK_PROVIDER_LISTEN_DISPATCH as "_WSK_PROVIDER_LISTEN_DISPATCH" = 48 {
        Basic @ 0, WskBind @ 16, WskAccept @ 24, WskInspectComplete @ 32, WskGetLocalAddress @ 40
    }
    WSK_PROVIDER_CONNECTION_DISPATCH as "_WSK_PROVIDER_CONNECTION_DISPATCH" = 104 {
        Basic @ 0, WskBind @ 16, WskConnect @ 24, WskGetLocalAddress @ 32, WskGetRemoteAddress @ 40,
        WskSend @ 48, WskReceive @ 56, WskDisconnect @ 64, WskRelease @ 72, WskConnectEx @ 80,
        WskSendEx @ 88, WskReceiveEx @ 96
    }
    WSK_PROVIDER_STREAM_DISPATCH as "_WSK_PROVIDER_STREAM_DISPATCH" = 120 {
        Basic @ 0, WskBind @ 16, WskAccept @ 24, WskConnect @ 32, WskListen @ 40, WskSend @ 48,
        WskReceive @ 56, WskDisconnect @ 64, WskRelease @ 72, WskGetLocalAddress @ 80,
        WskGetRemoteAddress @ 88, WskConnectEx @ 96, WskSendEx @ 104, WskReceiveEx @ 112
    }
    WSK_CLIENT_CONNECTION_DISPATCH as "_WSK_CLIENT_CONNECTION_DISPATCH" = 24 {
        WskReceiveEvent @ 0, WskDisconnectEvent @ 8, WskSendBacklogEvent @ 16
    }
    WSK_CLIENT_LISTEN_DISPATCH as "_WSK_CLIENT_LISTEN_DISPATCH" = 24 {
        WskAcceptEvent @ 0, WskInspectEvent @ 8, WskAbortEvent @ 16
    }
    SOCKADDR as "sockaddr" = 16 { sa_family @ 0, sa_data @ 2 }
    SOCKADDR_IN as "sockaddr_in" = 16 { sin_family @ 0, sin_port @ 2, sin_addr @ 4, sin_zero @ 8 }
    SOCKADDR_IN6 as "sockaddr_in6" = 28 {
        sin6_family @ 0, sin6_port @ 2, sin6_flowinfo @ 4, sin6_addr @ 8, sin6_scope_id @ 24
    }
    SOCKADDR_STORAGE as "sockaddr_storage" = 128 { ss_family @ 0 }
    ADDRINFOEXW as "addrinfoexW" = 72 {
        ai_flags @ 0, ai_family @ 4, ai_socktype @ 8, ai_protocol @ 12, ai_addrlen @ 16, ai_canonname @ 24,
        ai_addr @ 32, ai_blob @ 40, ai_bloblen @ 48, ai_provider @ 56, ai_next @ 64
    }
    WDF_VERSION as "_WDF_VERSION" = 12 { Major @ 0, Minor @ 4, Build @ 8 }
    WDF_BIND_INFO as "_WDF_BIND_INFO" = 48 {
        Size @ 0, Component @ 8, Version @ 16, FuncCount @ 28, FuncTable @ 32, Module @ 40
    }
    WDF_DRIVER_GLOBALS as "_WDF_DRIVER_GLOBALS" = 56 {
        Driver @ 0, DriverFlags @ 8, DriverTag @ 12, DriverName @ 16, DisplaceDriverUnload @ 48
    }
    WDF_DRIVER_CONFIG as "_WDF_DRIVER_CONFIG" = 32 {
        Size @ 0, EvtDriverDeviceAdd @ 8, EvtDriverUnload @ 16, DriverInitFlags @ 24, DriverPoolTag @ 28
    }
    WDF_OBJECT_ATTRIBUTES as "_WDF_OBJECT_ATTRIBUTES" = 56 {
        Size @ 0, EvtCleanupCallback @ 8, EvtDestroyCallback @ 16, ExecutionLevel @ 24,
        SynchronizationScope @ 28, ParentObject @ 32, ContextSizeOverride @ 40, ContextTypeInfo @ 48
    }
    WDF_OBJECT_CONTEXT_TYPE_INFO as "_WDF_OBJECT_CONTEXT_TYPE_INFO" = 40 {
        Size @ 0, ContextName @ 8, ContextSize @ 16, UniqueType @ 24, EvtDriverGetUniqueContextType @ 32
    }
    WDF_IO_QUEUE_CONFIG as "_WDF_IO_QUEUE_CONFIG" = 96 {
        Size @ 0, DispatchType @ 4, PowerManaged @ 8, AllowZeroLengthRequests @ 12, DefaultQueue @ 13,
        EvtIoDefault @ 16, EvtIoRead @ 24, EvtIoWrite @ 32, EvtIoDeviceControl @ 40,
        EvtIoInternalDeviceControl @ 48, EvtIoStop @ 56, EvtIoResume @ 64, EvtIoCanceledOnQueue @ 72,
        NumberOfPresentedRequests @ 80, Driver @ 88
    }
    WDF_FILEOBJECT_CONFIG as "_WDF_FILEOBJECT_CONFIG" = 40 {
        Size @ 0, EvtDeviceFileCreate @ 8, EvtFileClose @ 16, EvtFileCleanup @ 24,
        AutoForwardCleanupClose @ 32, FileObjectClass @ 36
    }
    WDF_WORKITEM_CONFIG as "_WDF_WORKITEM_CONFIG" = 24 { Size @ 0, EvtWorkItemFunc @ 8, AutomaticSerialization @ 16 }
    WDF_REQUEST_PARAMETERS as "_WDF_REQUEST_PARAMETERS" = 40 {
        Size @ 0, MinorFunction @ 2, Type @ 4, DeviceIoControl.OutputBufferLength @ 8,
        DeviceIoControl.InputBufferLength @ 16, DeviceIoControl.IoControlCode @ 24,
        DeviceIoControl.Type3InputBuffer @ 32
    }
}
