//! Credentials for a cluster with security on (docs/security.md, "What clients send"): a bearer token in
//! the `authorization` metadata of every call, and TLS trusting the cluster's CA with a client
//! certificate (mTLS). The same settings and environment variables as the Python SDK's
//! `mabeam_client.security`:
//!
//! ```text
//! MABEAM_TOKEN=<jwt>                          # or MABEAM_TOKEN_FILE=/path/to/token
//! MABEAM_TLS_CA=/etc/mabeam/tls/ca.crt        # trust this CA for the servers' certificates...
//! MABEAM_TLS_CERT=/etc/mabeam/tls/client.crt  # ...and present this certificate and key (mTLS)
//! MABEAM_TLS_KEY=/etc/mabeam/tls/client.key
//! MABEAM_TLS_SERVER_NAME=node-1               # optional: the name to verify instead of the address's host
//! ```
//!
//! Every client's `connect` uses [`Security::default`] (the environment, read once); `connect_with`
//! takes one explicitly.

use std::sync::OnceLock;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

use crate::error::{Error, Result};

/// A token and/or TLS files (paths); empty fields are off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    pub token: String,
    pub tls_ca: String,
    pub tls_cert: String,
    pub tls_key: String,
    pub server_name: String,
}

/// The channel every client uses: a tonic channel whose calls carry the token ([`Auth`]).
pub type Transport = InterceptedService<Channel, Auth>;

impl Security {
    /// Read `MABEAM_TOKEN` (or `MABEAM_TOKEN_FILE`) and `MABEAM_TLS_{CA,CERT,KEY,SERVER_NAME}`.
    pub fn from_env() -> Result<Security> {
        Security::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`Security::from_env`], reading the variables through `var` (tests, another environment).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Security> {
        let get = |name: &str| var(name).unwrap_or_default();
        let mut token = get("MABEAM_TOKEN").trim().to_string();
        if token.is_empty() {
            if let Some(path) = var("MABEAM_TOKEN_FILE").filter(|p| !p.is_empty()) {
                token = std::fs::read_to_string(&path)
                    .map_err(|e| Error::msg(Code::InvalidArgument, format!("MABEAM_TOKEN_FILE {path:?}: {e}")))?
                    .trim().to_string();
            }
        }
        let security = Security { token, tls_ca: get("MABEAM_TLS_CA"), tls_cert: get("MABEAM_TLS_CERT"),
            tls_key: get("MABEAM_TLS_KEY"), server_name: get("MABEAM_TLS_SERVER_NAME") };
        security.check()?;
        Ok(security)
    }

    /// What `connect` uses: the environment, read once (an unusable setting fails every `connect`).
    pub fn default_from_env() -> Result<Security> {
        static DEFAULT: OnceLock<std::result::Result<Security, String>> = OnceLock::new();
        DEFAULT.get_or_init(|| Security::from_env().map_err(|e| e.details().message.clone()))
            .clone().map_err(|message| Error::msg(Code::InvalidArgument, message))
    }

    /// True when channels use TLS (a CA is given).
    pub fn tls(&self) -> bool {
        !self.tls_ca.is_empty()
    }

    fn check(&self) -> Result<()> {
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            return Err(Error::msg(Code::InvalidArgument, "a client certificate needs its key (tls_cert and tls_key together)"));
        }
        if !self.tls_cert.is_empty() && self.tls_ca.is_empty() {
            return Err(Error::msg(Code::InvalidArgument, "a client certificate is sent over TLS: give tls_ca (the servers' CA) too"));
        }
        Ok(())
    }

    /// A lazily connecting channel to host:port (or a full URL) with these credentials; `keepalive`
    /// pings every 2 s and drops a connection whose ping goes unanswered for 2 s (the coordinator client).
    pub fn channel(&self, target: &str, keepalive: bool) -> Result<Transport> {
        self.check()?;
        let scheme = if self.tls() { "https" } else { "http" };
        let uri = if target.contains("://") { target.to_string() } else { format!("{scheme}://{target}") };
        let bad = |e: &dyn std::fmt::Display| Error::msg(Code::InvalidArgument, format!("bad endpoint {target:?}: {e}"));
        let mut endpoint = Endpoint::from_shared(uri).map_err(|e| bad(&e))?
            .connect_timeout(Duration::from_secs(if keepalive { 2 } else { 5 }));
        if keepalive {
            endpoint = endpoint.http2_keep_alive_interval(Duration::from_secs(2))
                .keep_alive_timeout(Duration::from_secs(2))
                .keep_alive_while_idle(true);
        }
        if self.tls() {
            endpoint = endpoint.tls_config(self.tls_config()?).map_err(|e| bad(&e))?;
        }
        let token = if self.token.is_empty() { None } else {
            Some(format!("Bearer {}", self.token).parse::<MetadataValue<Ascii>>()
                .map_err(|_| Error::msg(Code::InvalidArgument, "the token is not valid in a header"))?)
        };
        Ok(InterceptedService::new(endpoint.connect_lazy(), Auth(token)))
    }

    fn tls_config(&self) -> Result<ClientTlsConfig> {
        let read = |what: &str, path: &str| std::fs::read(path)
            .map_err(|e| Error::msg(Code::InvalidArgument, format!("TLS {what} {path:?}: {e}")));
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("CA", &self.tls_ca)?));
        if !self.tls_cert.is_empty() {
            config = config.identity(Identity::from_pem(read("certificate", &self.tls_cert)?, read("key", &self.tls_key)?));
        }
        if !self.server_name.is_empty() {
            config = config.domain_name(self.server_name.clone());
        }
        Ok(config)
    }
}

/// Adds `authorization: Bearer <token>` to every call (nothing without a token).
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("authorization", token.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_the_environment_and_are_checked() {
        let dir = std::env::temp_dir().join(format!("mabeam-rs-sec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("token");
        std::fs::write(&token_file, "tok-file\n").unwrap();
        let vars = |pairs: Vec<(&'static str, String)>| move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
        let s = Security::from_vars(vars(vec![("MABEAM_TOKEN_FILE", token_file.display().to_string())])).unwrap();
        assert_eq!(s.token, "tok-file");
        assert!(!s.tls());
        let s = Security::from_vars(vars(vec![("MABEAM_TOKEN", "tok-1".into()), ("MABEAM_TLS_CA", "ca.crt".into())])).unwrap();
        assert_eq!((s.token.as_str(), s.tls()), ("tok-1", true));
        let err = Security::from_vars(vars(vec![("MABEAM_TLS_CERT", "client.crt".into())])).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_token_rides_in_the_authorization_metadata() {
        let mut auth = Auth(Some("Bearer tok-1".parse().unwrap()));
        let request = tonic::service::Interceptor::call(&mut auth, tonic::Request::new(())).unwrap();
        assert_eq!(request.metadata().get("authorization").unwrap(), "Bearer tok-1");
        let mut none = Auth(None);
        assert!(tonic::service::Interceptor::call(&mut none, tonic::Request::new(())).unwrap().metadata().get("authorization").is_none());
    }
}
