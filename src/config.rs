//! Settings: one table of every flag and `LINUXGUARD_*` variable, and the resolver that picks
//! flag > env > default for each, validates it and records where each value came from.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::secret::{Secret, Secrets};

/// Commands that read settings, as a bit set per setting.
pub const WATCH: u8 = 1;
pub const START: u8 = 2;
pub const ATTEST: u8 = 4;
pub const STATUS: u8 = 8;
pub const SHOW: u8 = 16;
pub const MANIFEST: u8 = 32;
pub const RULES: u8 = 64;
const ALL: u8 = WATCH | START | ATTEST | STATUS | SHOW;
const IDENT: u8 = START | SHOW;
const KUBE: u8 = WATCH | START | ATTEST | SHOW;
const SENSOR: u8 = WATCH | START | SHOW;

/// Every setting, by name. The order is the order of `SETTINGS` and of `show-config`.
#[allow(clippy::enum_variant_names)] // `ApiKey`, `KubeletKey` name real settings
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    Server,
    ServerCa,
    TenantId,
    EnrollToken,
    EnrollTokenFile,
    ApiKey,
    ApiKeyFile,
    SaTokenFile,
    WorkloadId,
    NodeNameEnv,
    NodeName,
    PodUid,
    TlsCache,
    EnrollTimeout,
    ProcRoot,
    LogLevel,
    RingBufferMb,
    StatsInterval,
    CompatSyscalls,
    RedactFlags,
    WatchRead,
    WatchWrite,
    WatchConnect,
    KubeletUrl,
    KubeletReadOnlyPort,
    KubeletSecurePort,
    KubeletCa,
    SkipKubeletVerification,
    KubeletTokenPath,
    KubeletCert,
    KubeletKey,
    KubeletAnonymous,
    KubeletPollInterval,
    KubeletMaxPollAttempts,
    DisableContainerSelectors,
    Socket,
    SocketMode,
    AgentUid,
    Output,
    QueueMb,
    BatchMaxEvents,
    BatchMaxBytes,
    BatchMaxAgeMs,
    MetricsAddr,
    MetricsAllowRemote,
    ShutdownGrace,
    FilePath,
    FileMaxMb,
    FileKeep,
    SyslogAddr,
    SyslogFacility,
    OtlpEndpoint,
    OtlpHeadersFile,
    OtlpCa,
    OtlpCert,
    OtlpKey,
    Rules,
    NoDefaultRules,
    Exclude,
}

/// How a setting's value is checked.
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    Text,
    Path,
    /// `https://host[:port][/path]`; `http://` is a configuration error.
    HttpsUrl,
    /// `http://` or `https://` (the kubelet read-only port is plain HTTP).
    Url,
    /// Present or absent; env accepts 1/true/yes/on and 0/false/no/off.
    Bool,
    Num {
        min: u64,
        max: u64,
    },
    Choice(&'static [&'static str]),
    /// Read by `secret::take_secrets`, never by the parser.
    Secret,
    /// A flag whose value is optional (`--tls-cache` or `--tls-cache DIR`).
    OptionalPath,
    /// `ip:port` (a non-loopback address is allowed; `--metrics-allow-remote` silences the warning).
    SocketAddr,
    /// `--output`: a comma-separated list of outputs (`both` = `stdout,backend`).
    OutputList,
    /// `--syslog-addr`: `/dev/log`, `unix:/path`, `udp://host:port`, `tcp://host:port`.
    SyslogAddr,
    /// Paths: the flag repeated, or the variable's comma-separated list.
    PathList,
    /// The name of an environment variable (`[A-Za-z_][A-Za-z0-9_]*`) that no other setting reads.
    EnvName,
    /// Comma-separated absolute path prefixes, `default` (the built-in list) or `none`.
    Prefixes,
    /// `--exclude`: comma-separated `exe:/path`, `uid:N`, `cgroup:/path`, or `none`.
    Exclusions,
}

pub struct Setting {
    pub key: Key,
    /// The long flag without its dashes.
    pub flag: &'static str,
    pub env: &'static str,
    pub default: Option<&'static str>,
    pub ty: Ty,
    pub value_name: &'static str,
    pub help: &'static str,
    pub commands: u8,
}

macro_rules! setting {
    ($key:ident, $flag:literal, $env:literal, $default:expr, $ty:expr, $vn:literal, $cmds:expr, $help:literal) => {
        Setting {
            key: Key::$key,
            flag: $flag,
            env: $env,
            default: $default,
            ty: $ty,
            value_name: $vn,
            help: $help,
            commands: $cmds,
        }
    };
}

pub const DEFAULT_TLS_CACHE: &str = "/run/linuxguard/tls";

pub static SETTINGS: &[Setting] = &[
    setting!(
        Server,
        "server",
        "LINUXGUARD_SERVER",
        None,
        Ty::HttpsUrl,
        "URL",
        IDENT,
        "backend base URL (https:// only)"
    ),
    setting!(
        ServerCa,
        "server-ca",
        "LINUXGUARD_SERVER_CA",
        None,
        Ty::Path,
        "FILE",
        IDENT,
        "PEM bundle that verifies the backend (default: compiled-in web PKI roots)"
    ),
    setting!(
        TenantId,
        "tenant-id",
        "LINUXGUARD_TENANT_ID",
        None,
        Ty::Text,
        "ID",
        IDENT,
        "tenant to enrol into (required with an enrolment token)"
    ),
    setting!(
        EnrollToken,
        "enroll-token",
        "LINUXGUARD_ENROLL_TOKEN",
        None,
        Ty::Secret,
        "TOKEN",
        IDENT,
        "single-use enrolment token; prefer the env var (the flag leaks via ps and shell history)"
    ),
    setting!(
        EnrollTokenFile,
        "enroll-token-file",
        "LINUXGUARD_ENROLL_TOKEN_FILE",
        None,
        Ty::Path,
        "FILE",
        IDENT,
        "read the single-use token from FILE (e.g. $CREDENTIALS_DIRECTORY/enroll-token); may be removed after enrolment, and a new token written there is picked up without a restart once the identity expires"
    ),
    setting!(
        ApiKey,
        "api-key",
        "LINUXGUARD_API_KEY",
        None,
        Ty::Secret,
        "KEY",
        IDENT,
        "long-lived API key, instead of a token; prefer the env var"
    ),
    setting!(
        ApiKeyFile,
        "api-key-file",
        "LINUXGUARD_API_KEY_FILE",
        None,
        Ty::Path,
        "FILE",
        IDENT,
        "read the API key from FILE at each enrolment"
    ),
    setting!(
        SaTokenFile,
        "sa-token-file",
        "LINUXGUARD_SA_TOKEN_FILE",
        None,
        Ty::Path,
        "FILE",
        IDENT,
        "enrol with the Kubernetes service-account token projected into FILE (k8s_psat, audience linuxguard; needs the node name, pod UID and tenant id); read at each enrolment attempt"
    ),
    setting!(
        WorkloadId,
        "workload-id",
        "LINUXGUARD_WORKLOAD_ID",
        None,
        Ty::Text,
        "HEX",
        IDENT | ATTEST,
        "stable hex id of this workload outside Kubernetes; hashed with sha256"
    ),
    setting!(
        NodeNameEnv,
        "node-name-env",
        "LINUXGUARD_NODE_NAME_ENV",
        Some("LINUXGUARD_NODE_NAME"),
        Ty::EnvName,
        "NAME",
        IDENT | KUBE | MANIFEST,
        "read the node name from the environment variable NAME (SPIRE's node_name_env), e.g. MY_NODE_NAME"
    ),
    setting!(
        NodeName,
        "node-name",
        "LINUXGUARD_NODE_NAME",
        None,
        Ty::Text,
        "NAME",
        IDENT | KUBE,
        "node name: in Kubernetes spec.nodeName (Downward API), elsewhere the host name; read from the --node-name-env variable"
    ),
    setting!(
        PodUid,
        "pod-uid",
        "LINUXGUARD_POD_UID",
        None,
        Ty::Text,
        "UID",
        IDENT,
        "this pod's UID (Downward API metadata.uid)"
    ),
    setting!(
        TlsCache,
        "tls-cache",
        "LINUXGUARD_TLS_CACHE",
        None,
        Ty::OptionalPath,
        "[DIR]",
        IDENT,
        "cache the mTLS identity in DIR (default DIR /run/linuxguard/tls); unset: memory only"
    ),
    setting!(
        EnrollTimeout,
        "enroll-timeout",
        "LINUXGUARD_ENROLL_TIMEOUT",
        Some("300"),
        Ty::Num {
            min: 1,
            max: 86_400
        },
        "SECS",
        IDENT,
        "give up the first enrolment after this many seconds of retries (exit 1); enrolling again after the identity expired never gives up"
    ),
    setting!(
        ProcRoot,
        "proc-root",
        "LINUXGUARD_PROC_ROOT",
        Some("/proc"),
        Ty::Path,
        "DIR",
        ALL,
        "where the host's /proc is mounted"
    ),
    setting!(
        LogLevel,
        "log-level",
        "RUST_LOG",
        Some("info"),
        Ty::Text,
        "LEVEL",
        ALL,
        "error, warn, info, debug, trace, or an env_logger filter"
    ),
    setting!(
        RingBufferMb,
        "ring-buffer-mb",
        "LINUXGUARD_RING_BUFFER_MB",
        Some("2"),
        Ty::Num { min: 1, max: 1024 },
        "MB",
        SENSOR,
        "kernel ring buffer size in MiB (a power of two)"
    ),
    setting!(
        StatsInterval,
        "stats-interval",
        "LINUXGUARD_STATS_INTERVAL",
        Some("0"),
        Ty::Num {
            min: 0,
            max: 86_400
        },
        "SECS",
        SENSOR,
        "emit a {\"type\":\"stats\"} event every SECS seconds (0: none; watch then prints stats on stderr every 60 s and at exit, start reports them in heartbeats and status)"
    ),
    setting!(
        CompatSyscalls,
        "compat-syscalls",
        "LINUXGUARD_COMPAT_SYSCALLS",
        Some("true"),
        Ty::Bool,
        "",
        SENSOR,
        "watch 32-bit syscalls too (x86_64: int $0x80; arm64: AArch32 processes); =false leaves them unseen but saves ~0.2 us per syscall of every process (docs/events.md)"
    ),
    setting!(
        RedactFlags,
        "redact-flags",
        "LINUXGUARD_REDACT_FLAGS",
        Some(crate::events::redact::DEFAULT_FLAGS),
        Ty::Text,
        "LIST",
        SENSOR,
        "comma-separated flags whose values exec events show as [REDACTED], for every process (`--flag V`, `--flag=V`; `none`: no list); the agent's own --enroll-token and --api-key are always redacted in its own argv (docs/events.md)"
    ),
    setting!(
        WatchRead,
        "watch-read",
        "LINUXGUARD_WATCH_READ",
        Some("default"),
        Ty::Prefixes,
        "PATHS",
        SENSOR,
        "report opens for reading of files below these path prefixes (comma-separated; `default`: credential files, see docs/events.md; `none`)"
    ),
    setting!(
        WatchWrite,
        "watch-write",
        "LINUXGUARD_WATCH_WRITE",
        Some("default"),
        Ty::Prefixes,
        "PATHS",
        SENSOR,
        "report writes, creates, renames, deletes and mode changes below these path prefixes (comma-separated; `default`: /etc, binary, library, boot, cron and SSH key dirs, see docs/events.md; `none`)"
    ),
    setting!(
        WatchConnect,
        "watch-connect",
        "LINUXGUARD_WATCH_CONNECT",
        Some("default"),
        Ty::Prefixes,
        "PATHS",
        SENSOR,
        "report Unix socket connects to socket files below these path prefixes (comma-separated; `default`: the container runtimes' API sockets, see docs/events.md; `none`)"
    ),
    setting!(
        KubeletUrl,
        "kubelet-url",
        "LINUXGUARD_KUBELET_URL",
        None,
        Ty::Url,
        "URL",
        KUBE,
        "kubelet base URL, overriding host and port"
    ),
    setting!(
        KubeletReadOnlyPort,
        "kubelet-read-only-port",
        "LINUXGUARD_KUBELET_READ_ONLY_PORT",
        None,
        Ty::Num {
            min: 1,
            max: 65_535
        },
        "PORT",
        KUBE,
        "use the kubelet's plain-HTTP read-only port (excludes --kubelet-secure-port)"
    ),
    setting!(
        KubeletSecurePort,
        "kubelet-secure-port",
        "LINUXGUARD_KUBELET_SECURE_PORT",
        Some("10250"),
        Ty::Num {
            min: 1,
            max: 65_535
        },
        "PORT",
        KUBE,
        "kubelet HTTPS port"
    ),
    setting!(
        KubeletCa,
        "kubelet-ca",
        "LINUXGUARD_KUBELET_CA",
        Some("/run/secrets/kubernetes.io/serviceaccount/ca.crt"),
        Ty::Path,
        "FILE",
        KUBE,
        "PEM bundle that verifies the kubelet (/var/run/secrets/... when only that exists)"
    ),
    setting!(
        SkipKubeletVerification,
        "skip-kubelet-verification",
        "LINUXGUARD_SKIP_KUBELET_VERIFICATION",
        None,
        Ty::Bool,
        "",
        KUBE,
        "do not verify the kubelet's certificate"
    ),
    setting!(
        KubeletTokenPath,
        "kubelet-token-path",
        "LINUXGUARD_KUBELET_TOKEN_PATH",
        Some("/run/secrets/kubernetes.io/serviceaccount/token"),
        Ty::Path,
        "FILE",
        KUBE,
        "bearer token for the kubelet, re-read when it rotates"
    ),
    setting!(
        KubeletCert,
        "kubelet-cert",
        "LINUXGUARD_KUBELET_CERT",
        None,
        Ty::Path,
        "FILE",
        KUBE,
        "client certificate (PEM) for the kubelet, with --kubelet-key"
    ),
    setting!(
        KubeletKey,
        "kubelet-key",
        "LINUXGUARD_KUBELET_KEY",
        None,
        Ty::Path,
        "FILE",
        KUBE,
        "client private key (PEM) for the kubelet"
    ),
    setting!(
        KubeletAnonymous,
        "kubelet-anonymous",
        "LINUXGUARD_KUBELET_ANONYMOUS",
        None,
        Ty::Bool,
        "",
        KUBE,
        "call the kubelet without client authentication"
    ),
    setting!(
        KubeletPollInterval,
        "kubelet-poll-retry-interval-ms",
        "LINUXGUARD_KUBELET_POLL_RETRY_INTERVAL_MS",
        Some("500"),
        Ty::Num {
            min: 10,
            max: 60_000
        },
        "MS",
        KUBE,
        "wait between pod-list refetches for an unknown pod"
    ),
    setting!(
        KubeletMaxPollAttempts,
        "kubelet-max-poll-attempts",
        "LINUXGUARD_KUBELET_MAX_POLL_ATTEMPTS",
        Some("60"),
        Ty::Num { min: 1, max: 1_000 },
        "N",
        KUBE,
        "refetches for an unknown pod before giving up"
    ),
    setting!(
        DisableContainerSelectors,
        "disable-container-selectors",
        "LINUXGUARD_DISABLE_CONTAINER_SELECTORS",
        None,
        Ty::Bool,
        "",
        KUBE,
        "pod selectors only, answered as soon as the pod is listed (no container selectors, no wait for the container)"
    ),
    setting!(
        Socket,
        "socket",
        "LINUXGUARD_SOCKET",
        Some("/run/linuxguard/agent.sock"),
        Ty::Path,
        "PATH",
        START | ATTEST | STATUS | SHOW,
        "Unix socket for attestation and status"
    ),
    setting!(
        SocketMode,
        "socket-mode",
        "LINUXGUARD_SOCKET_MODE",
        Some("0660"),
        Ty::Choice(&["0660", "0666"]),
        "MODE",
        START | SHOW,
        "permissions of the Unix socket"
    ),
    setting!(
        AgentUid,
        "agent-uid",
        "LINUXGUARD_AGENT_UID",
        None,
        Ty::Num {
            min: 0,
            max: 4_294_967_294
        },
        "UID",
        ATTEST | STATUS | SHOW,
        "the uid the agent runs as, when not root: status and attest --self believe an answer only from a server running as root, as their own uid or as this uid (docs/socket.md)"
    ),
    setting!(
        Output,
        "output",
        "LINUXGUARD_OUTPUT",
        Some("backend"),
        Ty::OutputList,
        "LIST",
        START | SHOW,
        "where `start` sends events: a comma-separated list of backend, otlp, file, syslog, stdout (both = stdout,backend); each output but stdout has its own queue and thread; without backend there is no enrolment and no --server"
    ),
    setting!(
        QueueMb,
        "queue-mb",
        "LINUXGUARD_QUEUE_MB",
        Some("4"),
        Ty::Num { min: 1, max: 4096 },
        "MB",
        START | SHOW,
        "bound of the in-memory upload queue; when full the oldest events are dropped and counted"
    ),
    setting!(
        BatchMaxEvents,
        "batch-max-events",
        "LINUXGUARD_BATCH_MAX_EVENTS",
        Some("2000"),
        Ty::Num {
            min: 1,
            max: 1_000_000
        },
        "N",
        START | SHOW,
        "events per upload batch at most"
    ),
    setting!(
        BatchMaxBytes,
        "batch-max-bytes",
        "LINUXGUARD_BATCH_MAX_BYTES",
        Some("1048576"),
        Ty::Num {
            min: 64 << 10,
            max: 64 << 20
        },
        "BYTES",
        START | SHOW,
        "bytes per upload batch at most (an event larger than a batch is dropped and counted)"
    ),
    setting!(
        BatchMaxAgeMs,
        "batch-max-age-ms",
        "LINUXGUARD_BATCH_MAX_AGE_MS",
        Some("1000"),
        Ty::Num {
            min: 1,
            max: 600_000
        },
        "MS",
        START | SHOW,
        "upload a partial batch after this long"
    ),
    setting!(
        MetricsAddr,
        "metrics-addr",
        "LINUXGUARD_METRICS_ADDR",
        None,
        Ty::SocketAddr,
        "ADDR",
        START | SHOW,
        "serve Prometheus metrics (/metrics) and a health check (/healthz) on this ip:port, e.g. 127.0.0.1:9464, or 0.0.0.0:9464 for a cluster's Prometheus (off by default)"
    ),
    setting!(
        MetricsAllowRemote,
        "metrics-allow-remote",
        "LINUXGUARD_METRICS_ALLOW_REMOTE",
        None,
        Ty::Bool,
        "",
        START | SHOW,
        "a non-loopback --metrics-addr is intended (no warning): the endpoint has no authentication and serves counters only, no event data"
    ),
    setting!(
        ShutdownGrace,
        "shutdown-grace",
        "LINUXGUARD_SHUTDOWN_GRACE",
        Some("5"),
        Ty::Num { min: 0, max: 600 },
        "SECS",
        START | SHOW,
        "on SIGTERM, time allowed to flush queued events"
    ),
    setting!(
        FilePath,
        "file-path",
        "LINUXGUARD_FILE_PATH",
        None,
        Ty::Path,
        "FILE",
        START | SHOW,
        "--output file: append JSON lines to FILE (mode 0600; its directory is created 0700 if missing)"
    ),
    setting!(
        FileMaxMb,
        "file-max-mb",
        "LINUXGUARD_FILE_MAX_MB",
        Some("100"),
        Ty::Num {
            min: 1,
            max: 1_048_576
        },
        "MB",
        START | SHOW,
        "--output file: rotate the file before it grows past this many MiB (renamed to FILE.1, older ones shifted)"
    ),
    setting!(
        FileKeep,
        "file-keep",
        "LINUXGUARD_FILE_KEEP",
        Some("5"),
        Ty::Num { min: 1, max: 1000 },
        "N",
        START | SHOW,
        "--output file: rotated files kept (FILE.1 ... FILE.N, uncompressed); the oldest is removed"
    ),
    setting!(
        SyslogAddr,
        "syslog-addr",
        "LINUXGUARD_SYSLOG_ADDR",
        Some("/dev/log"),
        Ty::SyslogAddr,
        "ADDR",
        START | SHOW,
        "--output syslog: the local socket (/dev/log, unix:/PATH), udp://HOST:PORT or tcp://HOST:PORT (RFC 6587 octet counting); RFC 5424 messages with the event JSON as MSG"
    ),
    setting!(
        SyslogFacility,
        "syslog-facility",
        "LINUXGUARD_SYSLOG_FACILITY",
        Some("local0"),
        Ty::Choice(&[
            "user", "daemon", "auth", "authpriv", "local0", "local1", "local2", "local3", "local4",
            "local5", "local6", "local7"
        ]),
        "NAME",
        START | SHOW,
        "--output syslog: the facility of the messages (the severity comes from the event: info, or an alert's own)"
    ),
    setting!(
        OtlpEndpoint,
        "otlp-endpoint",
        "LINUXGUARD_OTLP_ENDPOINT",
        None,
        Ty::Url,
        "URL",
        START | SHOW,
        "--output otlp: the collector's OTLP/HTTP URL, http:// or https:// (/v1/logs is appended to a URL without a path); OTLP/JSON logs"
    ),
    setting!(
        OtlpHeadersFile,
        "otlp-headers-file",
        "LINUXGUARD_OTLP_HEADERS_FILE",
        None,
        Ty::Path,
        "FILE",
        START | SHOW,
        "--output otlp: HTTP headers sent with each request, one `Name: value` per line (tokens: never logged; read again when the file changes)"
    ),
    setting!(
        OtlpCa,
        "otlp-ca",
        "LINUXGUARD_OTLP_CA",
        None,
        Ty::Path,
        "FILE",
        START | SHOW,
        "--output otlp: PEM bundle that verifies an https:// collector (default: compiled-in web PKI roots)"
    ),
    setting!(
        OtlpCert,
        "otlp-cert",
        "LINUXGUARD_OTLP_CERT",
        None,
        Ty::Path,
        "FILE",
        START | SHOW,
        "--output otlp: client certificate chain (PEM) for mTLS, with --otlp-key"
    ),
    setting!(
        OtlpKey,
        "otlp-key",
        "LINUXGUARD_OTLP_KEY",
        None,
        Ty::Path,
        "FILE",
        START | SHOW,
        "--output otlp: client private key (PEM) for mTLS"
    ),
    setting!(
        Rules,
        "rules",
        "LINUXGUARD_RULES",
        None,
        Ty::PathList,
        "FILE",
        SENSOR,
        "a YAML rule file, loaded after the defaults (repeat the flag for several; the variable: comma-separated); SIGHUP re-reads them (docs/rules.md)"
    ),
    setting!(
        NoDefaultRules,
        "no-default-rules",
        "LINUXGUARD_NO_DEFAULT_RULES",
        None,
        Ty::Bool,
        "",
        SENSOR | RULES,
        "do not load the compiled-in default rules (only --rules files)"
    ),
    setting!(
        Exclude,
        "exclude",
        "LINUXGUARD_EXCLUDE",
        None,
        Ty::Exclusions,
        "LIST",
        SENSOR,
        "drop in the kernel every event of these (comma-separated): exe:/abs/path (the executable's processes and their descendants), uid:N (a real uid), cgroup:/path (a cgroup v2 directory below /sys/fs/cgroup); counted as filtered, never seen by rules or outputs (docs/rules.md)"
    ),
];

pub fn by_flag(flag: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.flag == flag)
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    Default,
    Unset,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Flag => "flag",
            Source::Env => "env",
            Source::Default => "default",
            Source::Unset => "unset",
        })
    }
}

#[derive(Debug, Clone)]
struct Resolved {
    value: Option<String>,
    source: Source,
    /// The environment variable read (the node name's is chosen by --node-name-env).
    var: String,
}

/// The resolved settings of one command. Values are validated; getters cannot fail.
#[derive(Debug)]
pub struct Config {
    commands: u8,
    values: HashMap<Key, Resolved>,
    pub enroll_token: Option<Secret>,
    pub api_key: Option<Secret>,
}

/// Raw values from the command line, by setting (None: a flag given without a value).
pub type FlagValues = Vec<(Key, Option<String>)>;

/// Resolves every setting that `commands` reads: flag beats env beats default.
pub fn resolve(
    commands: u8,
    flags: &FlagValues,
    env: &dyn Fn(&str) -> Option<String>,
    secrets: Secrets,
) -> Result<Config> {
    let mut values = HashMap::new();
    // The node-name variable first: it names the variable the node name is read from.
    let mut node_var = setting(Key::NodeName).env.to_string();
    let node_env = setting(Key::NodeNameEnv);
    if node_env.commands & commands != 0 {
        let r = resolve_one(node_env, flags, env, node_env.env)?;
        if let Some(v) = &r.value {
            node_var.clone_from(v);
        }
        values.insert(Key::NodeNameEnv, r);
    }
    for s in SETTINGS.iter().filter(|s| s.commands & commands != 0) {
        if matches!(s.ty, Ty::Secret) || s.key == Key::NodeNameEnv {
            continue;
        }
        let var = if s.key == Key::NodeName {
            node_var.as_str()
        } else {
            s.env
        };
        let r = resolve_one(s, flags, env, var)?;
        if s.key == Key::NodeName
            && var != s.env
            && r.source != Source::Flag
            && env(s.env).is_some_and(|v| !v.trim().is_empty())
        {
            log::warn!(
                "{} is set but not read: {} names {var} as the node-name variable",
                s.env,
                origin_name(
                    node_env,
                    values
                        .get(&Key::NodeNameEnv)
                        .map_or(Source::Default, |r: &Resolved| r.source),
                    node_env.env
                )
            );
        }
        values.insert(s.key, r);
    }
    let mut secret_sources = HashMap::new();
    let mut take = |key: Key, t: Option<crate::secret::Taken>| {
        t.map(|t| {
            secret_sources.insert(
                key,
                if t.from_flag {
                    Source::Flag
                } else {
                    Source::Env
                },
            );
            t.value
        })
    };
    let enroll_token = take(Key::EnrollToken, secrets.enroll_token);
    let api_key = take(Key::ApiKey, secrets.api_key);
    for (k, src) in secret_sources {
        values.insert(
            k,
            Resolved {
                value: None,
                source: src,
                var: setting(k).env.to_string(),
            },
        );
    }
    // The service-account files are documented at /run/secrets/...; a scratch image has no
    // /var/run -> /run link, and the kubelet mounts them at /var/run/secrets/...: when the
    // default is absent and the /var/run twin exists, use the twin.
    for key in [Key::KubeletCa, Key::KubeletTokenPath] {
        if let Some(r) = values.get_mut(&key).filter(|r| r.source == Source::Default) {
            if let Some(v) = r
                .value
                .as_mut()
                .filter(|v| !std::path::Path::new(v.as_str()).exists())
            {
                let twin = format!("/var{v}");
                if std::path::Path::new(&twin).exists() {
                    *v = twin;
                }
            }
        }
    }
    let cfg = Config {
        commands,
        values,
        enroll_token,
        api_key,
    };
    cfg.cross_check()?;
    Ok(cfg)
}

/// The setting of `key`.
pub fn setting(key: Key) -> &'static Setting {
    SETTINGS
        .iter()
        .find(|s| s.key == key)
        .expect("invariant: every key has a setting")
}

/// One setting from `var` in the environment (flag beats env beats default), validated.
fn resolve_one(
    s: &Setting,
    flags: &FlagValues,
    env: &dyn Fn(&str) -> Option<String>,
    var: &str,
) -> Result<Resolved> {
    let from_flag = flags.iter().rev().find(|(k, _)| *k == s.key);
    let repeated: Vec<String> = flags
        .iter()
        .filter(|(k, _)| *k == s.key)
        .map(|(_, v)| v.clone().unwrap_or_default())
        .collect();
    let (raw, source) = if matches!(s.ty, Ty::PathList) && !repeated.is_empty() {
        (Some(repeated.join(",")), Source::Flag)
    } else if let Some((_, v)) = from_flag {
        (Some(v.clone().unwrap_or_default()), Source::Flag)
    } else if let Some(v) = env(var).filter(|v| !v.trim().is_empty()) {
        (Some(v), Source::Env)
    } else if let Some(d) = s.default {
        (Some(d.to_string()), Source::Default)
    } else {
        (None, Source::Unset)
    };
    let name = origin_name(s, source, var);
    let value = match raw {
        Some(raw) => Some(validate_identity_input(
            s.key,
            validate(s, raw.trim(), &name)?,
            &name,
        )?),
        None => None,
    };
    Ok(Resolved {
        value,
        source,
        var: var.to_string(),
    })
}

/// How a message names where a value came from: `--flag`, else the variable.
fn origin_name(s: &Setting, source: Source, var: &str) -> String {
    match source {
        Source::Flag => format!("--{}", s.flag),
        _ => var.to_string(),
    }
}

fn validate(s: &Setting, v: &str, name: &str) -> Result<String> {
    let bad = |expect: String| Err(Error::config(format!("invalid value for {name}: {expect}")));
    match s.ty {
        Ty::Text | Ty::Path if v.is_empty() => {
            bad(format!("expected {}, got an empty value", s.value_name))
        }
        Ty::Text if s.key == Key::RedactFlags => {
            match v
                .split(',')
                .map(|f| f.trim().trim_start_matches('-'))
                .find(|f| {
                    !f.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                }) {
                Some(f) => bad(format!(
                    "{f:?} is not a flag name: give names such as password,token (comma-separated, dashes optional) or none"
                )),
                None => Ok(v.to_string()),
            }
        }
        Ty::Text | Ty::Path | Ty::Secret => Ok(v.to_string()),
        Ty::PathList => {
            if v.split(',').any(|p| p.trim().is_empty()) {
                return bad(format!(
                    "an empty {} in {v:?}: give file paths (the variable separates them with commas)",
                    s.value_name
                ));
            }
            Ok(v.to_string())
        }
        Ty::OptionalPath => Ok(if v.is_empty() {
            DEFAULT_TLS_CACHE.to_string()
        } else {
            v.to_string()
        }),
        Ty::HttpsUrl => {
            if v.starts_with("http://") {
                return bad(format!(
                    "{v:?} is plain http; the backend is only reached over https://"
                ));
            }
            check_url(v, &["https://"]).or_else(&bad)
        }
        Ty::Url => check_url(v, &["https://", "http://"]).or_else(&bad),
        Ty::Bool => match v.to_ascii_lowercase().as_str() {
            "" | "1" | "true" | "yes" | "on" => Ok("true".into()),
            "0" | "false" | "no" | "off" => Ok("false".into()),
            _ => bad(format!("expected true or false, got {v:?}")),
        },
        Ty::Num { min, max } => match v.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => {
                if s.key == Key::RingBufferMb && !n.is_power_of_two() {
                    return bad(format!("{n} is not a power of two (1, 2, 4, 8, ... 1024)"));
                }
                Ok(n.to_string())
            }
            _ => bad(format!(
                "expected a whole number from {min} to {max} ({}), got {v:?}",
                s.value_name
            )),
        },
        Ty::Choice(choices) => {
            if choices.contains(&v) {
                Ok(v.to_string())
            } else {
                bad(format!("expected one of {}, got {v:?}", choices.join(", ")))
            }
        }
        Ty::OutputList => crate::output::parse_list(v)
            .map(|kinds| kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(","))
            .or_else(&bad),
        Ty::SyslogAddr => crate::output::syslog::parse_target(v)
            .map(|_| v.to_string())
            .or_else(&bad),
        Ty::SocketAddr => match v.parse::<std::net::SocketAddr>() {
            Ok(_) => Ok(v.to_string()),
            Err(_) => bad(format!(
                "expected ip:port such as 127.0.0.1:9464 or 0.0.0.0:9464, got {v:?}"
            )),
        },
        Ty::Prefixes => check_prefixes(v).map(|()| v.to_string()).or_else(&bad),
        Ty::Exclusions => crate::sensor::exclude::parse_list(v)
            .map(|l| {
                l.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .or_else(&bad),
        Ty::EnvName => {
            if let Some(other) = SETTINGS
                .iter()
                .find(|o| o.env == v && o.key != Key::NodeName)
            {
                return bad(format!(
                    "{v} is another setting's variable (--{}); name the variable that holds the node name, e.g. MY_NODE_NAME",
                    other.flag
                ));
            }
            if is_env_name(v) {
                Ok(v.to_string())
            } else {
                bad(format!(
                    "expected an environment variable name (1 to 255 letters, digits and '_', not starting with a digit), got {v:?}"
                ))
            }
        }
    }
}

/// A watch list: `none`, or comma-separated items each `default` or an absolute path prefix
/// (at most 255 bytes, no `.` or `..` component: the kernel compares them with resolved paths;
/// `*` only as a whole component).
fn check_prefixes(v: &str) -> std::result::Result<(), String> {
    let how = "give absolute path prefixes separated by commas (`default` adds the built-in \
               list, `none` watches nothing)";
    if v.trim() == "none" {
        return Ok(());
    }
    for item in v.split(',').map(str::trim) {
        if item == "default" {
            continue;
        }
        if item.is_empty() {
            return Err(format!("an empty item in {v:?}: {how}"));
        }
        if !item.starts_with('/') {
            return Err(format!("{item:?} is not an absolute path: {how}"));
        }
        if item.len() > 255 {
            return Err(format!("{item:?} is longer than 255 bytes"));
        }
        if item.contains('\0') {
            return Err(format!("{item:?} contains a NUL byte"));
        }
        for c in item.split('/') {
            if c == "." || c == ".." {
                return Err(format!(
                    "{item:?} has a `{c}` component: the kernel compares resolved paths, write it without"
                ));
            }
            if c.contains('*') && c != "*" {
                return Err(format!(
                    "{item:?}: `*` stands for one whole path component only (as in /home/*/.ssh/)"
                ));
            }
        }
    }
    Ok(())
}

/// A portable environment variable name (POSIX, and Kubernetes' C_IDENTIFIER):
/// `[A-Za-z_][A-Za-z0-9_]*`, at most 255 bytes.
pub fn is_env_name(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 255
        && !b[0].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Identity inputs are checked whenever they are set, whichever command reads them. The node name
/// is checked as a host name here; where it becomes the kubelet's host name, the kubelet client
/// checks it as a Kubernetes node name (`cmd::options::kubelet`).
fn validate_identity_input(key: Key, v: String, name: &str) -> Result<String> {
    match key {
        Key::NodeName => crate::identity::workload::validate_host_name(&v, name)?,
        Key::PodUid => crate::identity::workload::validate_pod_uid(&v)?,
        Key::WorkloadId => crate::identity::workload::validate_workload_id(&v)?,
        _ => {}
    }
    Ok(v)
}

fn check_url(v: &str, schemes: &[&str]) -> std::result::Result<String, String> {
    let Some(scheme) = schemes.iter().find(|s| v.starts_with(**s)) else {
        return Err(format!(
            "expected a URL starting with {}, got {v:?}",
            schemes.join(" or ")
        ));
    };
    let rest = &v[scheme.len()..];
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains('@') || rest.contains(char::is_whitespace) {
        return Err(format!("expected {scheme}HOST[:PORT][/PATH], got {v:?}"));
    }
    if rest.contains(['?', '#']) {
        return Err(format!("a base URL takes no query or fragment, got {v:?}"));
    }
    Ok(v.trim_end_matches('/').to_string())
}

impl Config {
    fn cross_check(&self) -> Result<()> {
        // The secure port has a default; only one the user gave (flag or env) conflicts.
        let secure = self.source(Key::KubeletSecurePort);
        if self.is_set(Key::KubeletReadOnlyPort) && matches!(secure, Source::Flag | Source::Env) {
            return Err(Error::config(format!(
                "{} and {} exclude each other: pick the plain-HTTP read-only port or the HTTPS port, and remove the other",
                self.origin_of(Key::KubeletReadOnlyPort),
                self.origin_of(Key::KubeletSecurePort)
            )));
        }
        if self.is_set(Key::KubeletCert) != self.is_set(Key::KubeletKey) {
            return Err(Error::config(
                "--kubelet-cert and --kubelet-key go together: give both or neither",
            ));
        }
        if self.flag(Key::KubeletAnonymous) && self.is_set(Key::KubeletCert) {
            return Err(Error::config(
                "--kubelet-anonymous excludes --kubelet-cert/--kubelet-key",
            ));
        }
        let outputs = self.get(Key::Output).unwrap_or("");
        let has = |o: &str| outputs.split(',').any(|x| x == o);
        if has("otlp") && !self.is_set(Key::OtlpEndpoint) {
            return Err(Error::config(format!(
                "{} includes otlp but no collector is named: set --otlp-endpoint URL (or \
                 LINUXGUARD_OTLP_ENDPOINT), e.g. http://otel-collector:4318",
                self.origin_of(Key::Output)
            )));
        }
        if self.is_set(Key::OtlpCert) != self.is_set(Key::OtlpKey) {
            return Err(Error::config(
                "--otlp-cert and --otlp-key go together: give both or neither",
            ));
        }
        let plain = self
            .get(Key::OtlpEndpoint)
            .is_some_and(|u| u.starts_with("http://"));
        if plain && (self.is_set(Key::OtlpCa) || self.is_set(Key::OtlpCert)) {
            return Err(Error::config(
                "--otlp-ca and --otlp-cert/--otlp-key need an https:// --otlp-endpoint; the one \
                 given is plain http://",
            ));
        }
        if has("file") && !self.is_set(Key::FilePath) {
            return Err(Error::config(format!(
                "{} includes file but no file is named: set --file-path FILE (or \
                 LINUXGUARD_FILE_PATH), e.g. /var/log/linuxguard/events.jsonl",
                self.origin_of(Key::Output)
            )));
        }
        Ok(())
    }

    pub fn get(&self, key: Key) -> Option<&str> {
        self.values.get(&key).and_then(|r| r.value.as_deref())
    }
    /// Where `key` is set: `--flag`, or the env variable's name (the one read, for the node
    /// name the --node-name-env variable).
    pub fn origin_of(&self, key: Key) -> String {
        origin_name(setting(key), self.source(key), &self.var(key))
    }
    /// The environment variable `key` is read from.
    pub fn var(&self, key: Key) -> String {
        self.values
            .get(&key)
            .map_or_else(|| setting(key).env.to_string(), |r| r.var.clone())
    }
    pub fn is_set(&self, key: Key) -> bool {
        self.get(key).is_some()
    }
    pub fn source(&self, key: Key) -> Source {
        self.values.get(&key).map_or(Source::Unset, |r| r.source)
    }
    pub fn path(&self, key: Key) -> Option<PathBuf> {
        self.get(key).map(PathBuf::from)
    }
    /// A [`Ty::PathList`] setting's paths (none when unset).
    pub fn paths(&self, key: Key) -> Vec<PathBuf> {
        self.get(key)
            .map(|v| v.split(',').map(|p| PathBuf::from(p.trim())).collect())
            .unwrap_or_default()
    }

    pub fn flag(&self, key: Key) -> bool {
        self.get(key) == Some("true")
    }
    /// A numeric setting; 0 when the command does not read it.
    pub fn num(&self, key: Key) -> u64 {
        self.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
    }
    /// Every setting this config holds, in table order, with a printable value (secrets
    /// redacted), its source and the environment variable it is read from.
    pub fn describe(&self) -> Vec<(&'static Setting, String, Source, String)> {
        SETTINGS
            .iter()
            .filter(|s| s.commands & self.commands != 0)
            .map(|s| {
                let shown = match s.key {
                    Key::EnrollToken => redact(self.enroll_token.as_ref()),
                    Key::ApiKey => redact(self.api_key.as_ref()),
                    // The path is not secret; what it holds is shown as the other secrets.
                    Key::EnrollTokenFile | Key::ApiKeyFile | Key::SaTokenFile => {
                        self.get(s.key).map_or_else(
                            || "<unset>".to_string(),
                            |p| {
                                format!(
                                    "{p} {}",
                                    crate::secret::describe_file(std::path::Path::new(p))
                                )
                            },
                        )
                    }
                    k => self
                        .get(k)
                        .map_or_else(|| "<unset>".to_string(), str::to_string),
                };
                (s, shown, self.source(s.key), self.var(s.key))
            })
            .collect()
    }
}

fn redact(s: Option<&Secret>) -> String {
    s.map_or_else(|| "<unset>".to_string(), |s| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn flag_beats_env_beats_default() {
        let env = env_of(&[
            ("LINUXGUARD_SERVER", "https://env.example"),
            ("LINUXGUARD_QUEUE_MB", "8"),
        ]);
        let flags = vec![(Key::Server, Some("https://flag.example/".into()))];
        let c = resolve(START, &flags, &env, Secrets::default()).unwrap();
        assert_eq!(c.get(Key::Server), Some("https://flag.example"));
        assert_eq!(c.source(Key::Server), Source::Flag);
        assert_eq!(c.num(Key::QueueMb), 8);
        assert_eq!(c.source(Key::QueueMb), Source::Env);
        assert_eq!(c.num(Key::ShutdownGrace), 5);
        assert_eq!(c.source(Key::ShutdownGrace), Source::Default);
        assert_eq!(c.source(Key::TenantId), Source::Unset);
    }

    #[test]
    fn http_server_is_a_config_error() {
        let e = resolve(
            START,
            &vec![(Key::Server, Some("http://x".into()))],
            &|_| None,
            Secrets::default(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), crate::error::Kind::Config);
        assert!(e.to_string().contains("--server"), "{e}");
        assert!(e.to_string().contains("https://"), "{e}");
    }

    #[test]
    fn bad_numbers_name_the_variable() {
        let env = env_of(&[("LINUXGUARD_RING_BUFFER_MB", "3")]);
        let e = resolve(WATCH, &vec![], &env, Secrets::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("LINUXGUARD_RING_BUFFER_MB") && e.contains("power of two"),
            "{e}"
        );
        let e = resolve(
            START,
            &vec![(Key::QueueMb, Some("lots".into()))],
            &|_| None,
            Secrets::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--queue-mb") && e.contains("whole number"),
            "{e}"
        );
        // A batch must hold an ordinary event: 64 KiB at least.
        let batch = |v: &str| {
            resolve(
                START,
                &vec![(Key::BatchMaxBytes, Some(v.into()))],
                &|_| None,
                Secrets::default(),
            )
        };
        let e = batch("1024").unwrap_err().to_string();
        assert!(
            e.contains("--batch-max-bytes") && e.contains("65536"),
            "{e}"
        );
        assert!(batch("65536").is_ok());
    }

    #[test]
    fn tls_cache_without_value_uses_default_dir() {
        let c = resolve(
            START,
            &vec![(Key::TlsCache, None)],
            &|_| None,
            Secrets::default(),
        )
        .unwrap();
        assert_eq!(c.get(Key::TlsCache), Some(DEFAULT_TLS_CACHE));
        let c = resolve(START, &vec![], &|_| None, Secrets::default()).unwrap();
        assert_eq!(c.get(Key::TlsCache), None);
    }

    #[test]
    fn metrics_addr_is_any_ip_and_port() {
        for ok in ["0.0.0.0:9464", "127.0.0.1:9464", "[::]:9090", "10.1.2.3:1"] {
            let c = resolve(
                START,
                &vec![(Key::MetricsAddr, Some(ok.into()))],
                &|_| None,
                Secrets::default(),
            );
            assert!(c.is_ok(), "{ok}");
        }
        for bad in ["localhost:9464", "0.0.0.0", ":9090", "1.2.3.4:99999"] {
            let e = resolve(
                START,
                &vec![(Key::MetricsAddr, Some(bad.into()))],
                &|_| None,
                Secrets::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("--metrics-addr") && e.contains("ip:port"), "{e}");
        }
    }

    #[test]
    fn kubelet_exclusions() {
        let flags = vec![
            (Key::KubeletReadOnlyPort, Some("10255".into())),
            (Key::KubeletSecurePort, Some("10250".into())),
        ];
        let e = resolve(ATTEST, &flags, &|_| None, Secrets::default()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("--kubelet-read-only-port and --kubelet-secure-port"),
            "{e}"
        );
        // Either one from the environment conflicts too, and the message says where each was set.
        let env = env_of(&[("LINUXGUARD_KUBELET_SECURE_PORT", "10250")]);
        let flags = vec![(Key::KubeletReadOnlyPort, Some("10255".into()))];
        let e = resolve(ATTEST, &flags, &env, Secrets::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("--kubelet-read-only-port and LINUXGUARD_KUBELET_SECURE_PORT exclude"),
            "{e}"
        );
        let env = env_of(&[("LINUXGUARD_KUBELET_READ_ONLY_PORT", "10255")]);
        let flags = vec![(Key::KubeletSecurePort, Some("10250".into()))];
        let e = resolve(ATTEST, &flags, &env, Secrets::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("LINUXGUARD_KUBELET_READ_ONLY_PORT and --kubelet-secure-port exclude"),
            "{e}"
        );
        // The read-only port alone (the secure port at its default) is fine.
        let env = env_of(&[("LINUXGUARD_KUBELET_READ_ONLY_PORT", "10255")]);
        assert!(resolve(ATTEST, &vec![], &env, Secrets::default()).is_ok());
        let flags = vec![(Key::KubeletCert, Some("/c".into()))];
        assert!(resolve(ATTEST, &flags, &|_| None, Secrets::default()).is_err());
    }

    #[test]
    fn every_key_has_exactly_one_setting_and_unique_names() {
        let mut flags: Vec<&str> = SETTINGS.iter().map(|s| s.flag).collect();
        flags.sort();
        flags.dedup();
        assert_eq!(flags.len(), SETTINGS.len());
        let mut envs: Vec<&str> = SETTINGS.iter().map(|s| s.env).collect();
        envs.sort();
        envs.dedup();
        assert_eq!(envs.len(), SETTINGS.len());
    }

    #[test]
    fn readme_documents_every_setting() {
        let readme = include_str!("../README.md");
        for s in SETTINGS {
            assert!(
                readme.contains(&format!("`--{}`", s.flag)),
                "README.md lacks --{}",
                s.flag
            );
            assert!(
                readme.contains(&format!("`{}`", s.env)),
                "README.md lacks {}",
                s.env
            );
        }
    }

    #[test]
    fn identity_inputs_are_validated_for_every_command() {
        // A host name is a node name outside Kubernetes: kept as given.
        let env = env_of(&[("LINUXGUARD_NODE_NAME", "Build_Host")]);
        let c = resolve(WATCH, &vec![], &env, Secrets::default()).unwrap();
        assert_eq!(c.get(Key::NodeName), Some("Build_Host"));
        let env = env_of(&[("LINUXGUARD_NODE_NAME", "bad\u{1}node")]);
        let e = resolve(WATCH, &vec![], &env, Secrets::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("LINUXGUARD_NODE_NAME \"bad\\u{1}node\" is not a host name"),
            "{e}"
        );
        let e = resolve(
            START,
            &vec![(Key::PodUid, Some("web-7d9f".into()))],
            &|_| None,
            Secrets::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("use metadata.uid"), "{e}");
    }

    #[test]
    fn node_name_is_read_from_the_named_variable() {
        let env = env_of(&[
            ("LINUXGUARD_NODE_NAME", "not-me"),
            ("MY_NODE_NAME", "worker-1"),
            ("LINUXGUARD_NODE_NAME_ENV", "NODE_NAME"),
            ("NODE_NAME", "worker-2"),
        ]);
        // The flag names the variable; it beats LINUXGUARD_NODE_NAME_ENV.
        let flags = vec![(Key::NodeNameEnv, Some("MY_NODE_NAME".into()))];
        let c = resolve(START, &flags, &env, Secrets::default()).unwrap();
        assert_eq!(c.get(Key::NodeName), Some("worker-1"));
        assert_eq!(c.source(Key::NodeName), Source::Env);
        assert_eq!(c.origin_of(Key::NodeName), "MY_NODE_NAME");
        assert_eq!(c.var(Key::NodeName), "MY_NODE_NAME");
        // The variable's own variable.
        let c = resolve(ATTEST, &vec![], &env, Secrets::default()).unwrap();
        assert_eq!(c.get(Key::NodeName), Some("worker-2"));
        assert_eq!(c.get(Key::NodeNameEnv), Some("NODE_NAME"));
        assert_eq!(c.source(Key::NodeNameEnv), Source::Env);
        // The default.
        let env = env_of(&[("LINUXGUARD_NODE_NAME", "worker-3")]);
        let c = resolve(WATCH, &vec![], &env, Secrets::default()).unwrap();
        assert_eq!(c.get(Key::NodeName), Some("worker-3"));
        assert_eq!(c.get(Key::NodeNameEnv), Some("LINUXGUARD_NODE_NAME"));
        assert_eq!(c.source(Key::NodeNameEnv), Source::Default);
        // --node-name beats every variable.
        let flags = vec![
            (Key::NodeNameEnv, Some("MY_NODE_NAME".into())),
            (Key::NodeName, Some("flagged".into())),
        ];
        let c = resolve(START, &flags, &env, Secrets::default()).unwrap();
        assert_eq!(c.get(Key::NodeName), Some("flagged"));
        assert_eq!(c.origin_of(Key::NodeName), "--node-name");
        // check-manifest reads only the variable's name.
        let c = resolve(MANIFEST, &flags, &env, Secrets::default()).unwrap();
        assert_eq!(c.get(Key::NodeNameEnv), Some("MY_NODE_NAME"));
        assert!(!c.is_set(Key::NodeName));
    }

    #[test]
    fn node_name_env_must_name_a_variable_of_its_own() {
        for bad in [
            "",
            "1A",
            "A-B",
            "A B",
            "A=B",
            "É",
            "LINUXGUARD_API_KEY",
            "RUST_LOG",
        ] {
            let flags = vec![(Key::NodeNameEnv, Some(bad.into()))];
            let e = resolve(SHOW, &flags, &|_| None, Secrets::default());
            assert!(e.is_err(), "{bad:?} accepted");
            assert!(
                e.unwrap_err().to_string().contains("--node-name-env"),
                "{bad:?}"
            );
        }
        for good in [
            "MY_NODE_NAME",
            "_x",
            "NODE_NAME",
            "LINUXGUARD_NODE_NAME",
            "a1",
        ] {
            let flags = vec![(Key::NodeNameEnv, Some(good.into()))];
            assert!(
                resolve(SHOW, &flags, &|_| None, Secrets::default()).is_ok(),
                "{good}"
            );
        }
        assert!(!is_env_name(&"A".repeat(256)));
    }
}
