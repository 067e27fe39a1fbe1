//! Authentication settings (flags and `AGENTWIRE_*` environment variables).

use std::path::PathBuf;

/// Whether clients must present a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Every request needs a valid JWT.
    Jwt,
    /// No authentication: any client may use any tenant. For development only; logged loudly.
    Off,
}

/// How tokens are verified and which browser origins may connect.
#[derive(Clone, Debug, clap::Args)]
pub struct AuthArgs {
    /// `jwt` (the default) or `off` (development only: every client may use every tenant).
    #[arg(long = "auth", env = "AGENTWIRE_AUTH", value_enum, default_value_t = AuthMode::Jwt)]
    pub mode: AuthMode,
    /// Shared secret of HS256 tokens.
    #[arg(
        long = "jwt-hs256-secret",
        env = "AGENTWIRE_JWT_HS256_SECRET",
        hide_env_values = true
    )]
    pub hs256_secret: Option<String>,
    /// PEM file with the RSA public key of RS256 tokens.
    #[arg(long = "jwt-rs256-public-key", env = "AGENTWIRE_JWT_RS256_PUBLIC_KEY")]
    pub rs256_public_key: Option<PathBuf>,
    /// JSON Web Key Set file: RS256 tokens are checked with the key their `kid` names.
    #[arg(long = "jwks-file", env = "AGENTWIRE_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Required `iss` claim, if set.
    #[arg(long = "jwt-issuer", env = "AGENTWIRE_JWT_ISSUER")]
    pub issuer: Option<String>,
    /// Required `aud` claim, if set.
    #[arg(long = "jwt-audience", env = "AGENTWIRE_JWT_AUDIENCE")]
    pub audience: Option<String>,
    /// Clock skew allowed when checking `exp` and `nbf`, in seconds.
    #[arg(
        long = "jwt-leeway-secs",
        env = "AGENTWIRE_JWT_LEEWAY_SECS",
        default_value_t = 30
    )]
    pub leeway_secs: u64,
    /// Browser origins allowed to open WebSockets (comma-separated, e.g.
    /// `https://app.example.com`); empty allows any. Requests without `Origin` are not browsers
    /// and are always allowed.
    #[arg(
        long = "allowed-origins",
        env = "AGENTWIRE_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
}

impl AuthArgs {
    /// Authentication off, for tests and local development.
    pub fn off() -> Self {
        Self {
            mode: AuthMode::Off,
            hs256_secret: None,
            rs256_public_key: None,
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway_secs: 30,
            allowed_origins: Vec::new(),
        }
    }
}
