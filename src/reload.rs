//! One `reload()` for every trigger (today SIGHUP): read the config again, compile a whole
//! new policy off the hot path, and swap it in; on any failure the running policy keeps
//! serving. Either way `portvakt_reloads_total` says what happened.

use std::path::PathBuf;

use tracing::{error, info, warn};

use crate::config::{Config, ConfigError};
use crate::handler::Gateway;
use crate::policy::Policy;
use crate::policy::compile::CompileError;

/// Where the config comes from, read again at every reload.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    Embedded,
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, ConfigError> {
        match self {
            ConfigSource::File(path) => Config::load(path),
            ConfigSource::Embedded => Config::embedded_default(),
        }
    }
}

/// Why a reload was rejected; the running policy is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Compile(#[from] CompileError),
}

/// Builds the policy from `source` and puts it in force, or keeps the old one.
/// Listener addresses are read once, at start: a change is reported, not applied.
pub async fn reload(gateway: &Gateway, source: &ConfigSource) -> Result<u64, ReloadError> {
    let metrics = gateway.metrics().clone();
    let source = source.clone();
    let built = tokio::task::spawn_blocking(move || -> Result<Policy, ReloadError> {
        let config = source.load()?;
        Ok(Policy::compile(config, &metrics)?)
    })
    .await
    .expect("policy build does not panic");
    match built {
        Ok(policy) => {
            let running = gateway.policy();
            if policy.config.listen != running.config.listen
                || policy.config.admin_listen != running.config.admin_listen
            {
                warn!(
                    "listen addresses changed in the config: they take effect at the next restart"
                );
            }
            gateway.swap(policy);
            gateway.metrics().reloads_success.inc();
            let generation = gateway.policy().generation;
            info!(generation, "policy reloaded");
            Ok(generation)
        }
        Err(err) => {
            gateway.metrics().reloads_failure.inc();
            error!(error = %err, "reload rejected; the previous policy keeps serving");
            Err(err)
        }
    }
}
