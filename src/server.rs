//! What every session shares: the config (replaced on SIGHUP), the TLS
//! config, the authenticator and the mailbox registry.

use std::sync::{Arc, RwLock};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::store::{self, Registry};

pub struct Context {
    config: RwLock<Arc<Config>>,
    tls: RwLock<Option<Arc<rustls::ServerConfig>>>,
    pub auth: Authenticator,
    pub registry: Registry,
}

impl Context {
    pub fn new(config: Config, tls: Option<Arc<rustls::ServerConfig>>) -> Context {
        let auth = Authenticator::new(&config);
        Context { config: RwLock::new(Arc::new(config)), tls: RwLock::new(tls), auth, registry: Registry::new() }
    }

    /// The config now; a session keeps the one it started with.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The TLS config now, if TLS is set up.
    pub fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces config and TLS config (SIGHUP). Sessions already running
    /// keep what they had.
    pub fn reload(&self, config: Config, tls: Option<Arc<rustls::ServerConfig>>) {
        self.auth.reload(&config);
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
    }

    /// Store options for the current config.
    pub fn store_options(&self) -> store::Options {
        crate::admin::store_options(&self.config())
    }
}
