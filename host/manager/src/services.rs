//! Services between plugins: the tokens that name a calling plugin to the host, the rule of
//! who may call what (`requires` / `optional_requires`), and the chains of nested calls in
//! flight, which end a cycle (A → B → A) or a runaway chain with `call_cycle` and pass their
//! deadline down. The host's endpoint that workers call is `services/endpoint.rs`.

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use plugvisor_host::{CallContext, PluginError};
use plugvisor_proto::wire::{ServiceCall, ServiceInfo};
use plugvisor_proto::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::time::Instant;

mod endpoint;

/// The longest chain of nested service calls (A → B → C … counts the plugins in it).
pub const MAX_CHAIN: usize = 8;

/// Name of the endpoint's socket in the host's directory.
const SOCKET_NAME: &str = "host.sock";

/// What the endpoint needs from the manager (implemented by it; held weakly).
pub(crate) trait Backend: Send + Sync + 'static {
    /// Whether `caller` (a loaded plugin) may call `service`: `Some(true)` when it requires
    /// it, `Some(false)` when it optionally requires it, `None` when it may not.
    fn permission(&self, caller: &str, service: &str) -> Option<bool>;

    /// The loaded plugin that provides `service`, if one does.
    fn provider(&self, service: &str) -> Option<String>;

    /// One call of `provider` (its `method`, or `execute`).
    fn call(
        self: Arc<Self>,
        provider: String,
        call: ServiceCall,
        timeout: Option<Duration>,
    ) -> BoxFuture<'static, Result<Value, PluginError>>;

    /// One stream of `provider`.
    fn stream(
        self: Arc<Self>,
        provider: String,
        input: Value,
    ) -> BoxFuture<'static, Result<BoxStream<'static, Result<Value, PluginError>>, PluginError>>;
}

/// The chains of nested calls in flight, by the context id their provider was called with.
type Chains = Arc<Mutex<HashMap<u64, Chain>>>;

/// Tokens of the plugins that may call services, and the chains in flight.
pub(crate) struct Services {
    socket: PathBuf,
    tokens: Arc<Mutex<HashMap<String, String>>>,
    chains: Chains,
    endpoint: Mutex<Option<endpoint::Running>>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// A plugin's right to call services: its token, revoked when this is dropped (when the
/// loaded plugin it was made for is gone).
#[derive(Debug)]
pub(crate) struct Grant {
    token: String,
    socket: PathBuf,
    tokens: Weak<Mutex<HashMap<String, String>>>,
}

impl Grant {
    /// The environment its worker gets: the endpoint and the token.
    pub(crate) fn env(&self) -> [(String, String); 2] {
        use plugvisor_proto::wire::services::{HOST_ADDR_ENV, HOST_TOKEN_ENV};
        [
            (HOST_ADDR_ENV.to_owned(), self.socket.display().to_string()),
            (HOST_TOKEN_ENV.to_owned(), self.token.clone()),
        ]
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if let Some(tokens) = self.tokens.upgrade() {
            lock(&tokens).remove(&self.token);
        }
    }
}

/// One chain: the plugins waiting in it, the callee last, and its deadline.
#[derive(Debug, Clone)]
struct Chain {
    plugins: Vec<String>,
    deadline: Option<Instant>,
}

/// A service call admitted into its chain: the context its provider is called with, and its
/// deadline. The chain entry is removed when this is dropped.
pub(crate) struct Entered {
    pub(crate) context: CallContext,
    pub(crate) timeout: Option<Duration>,
    chains: Chains,
}

impl Drop for Entered {
    fn drop(&mut self) {
        lock(&self.chains).remove(&self.context.0);
    }
}

impl Services {
    /// The registry of a host whose private directory is `dir`.
    pub(crate) fn new(dir: &Path) -> Self {
        Self {
            socket: dir.join(SOCKET_NAME),
            tokens: Arc::default(),
            chains: Arc::default(),
            endpoint: Mutex::new(None),
        }
    }

    /// A token for `plugin`, starting the endpoint if it is not running yet.
    ///
    /// # Errors
    /// The endpoint's socket cannot be bound (the message says where and why).
    pub(crate) fn grant(&self, plugin: &str, backend: Weak<dyn Backend>) -> Result<Grant, String> {
        self.ensure_endpoint(backend)?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        lock(&self.tokens).insert(token.clone(), plugin.to_owned());
        Ok(Grant {
            token,
            socket: self.socket.clone(),
            tokens: Arc::downgrade(&self.tokens),
        })
    }

    fn ensure_endpoint(&self, backend: Weak<dyn Backend>) -> Result<(), String> {
        let mut running = lock(&self.endpoint);
        if running.is_none() {
            let shared = endpoint::Shared {
                backend,
                tokens: Arc::clone(&self.tokens),
                chains: Arc::clone(&self.chains),
            };
            *running = Some(endpoint::start(&self.socket, shared)?);
        }
        Ok(())
    }

    /// Stops the endpoint (its socket file is removed).
    pub(crate) fn stop(&self) {
        lock(&self.endpoint).take();
    }
}

/// The plugin a bearer token names, compared in constant time against every token.
fn caller_of(tokens: &Mutex<HashMap<String, String>>, presented: &str) -> Option<String> {
    use subtle::ConstantTimeEq;
    let tokens = lock(tokens);
    let mut found = None;
    for (token, plugin) in tokens.iter() {
        if bool::from(token.as_bytes().ct_eq(presented.as_bytes())) {
            found = Some(plugin.clone());
        }
    }
    found
}

/// Admits `caller`'s call of `provider` into the chain the caller's `context` names (a new
/// chain when it names none of the caller's), with `requested` as the call's own deadline.
///
/// # Errors
/// [`PluginError::CallCycle`] when `provider` already waits in the chain or the chain would
/// be longer than [`MAX_CHAIN`]; [`PluginError::TimedOut`] when the chain's deadline passed.
fn enter(
    chains: &Chains,
    caller: &str,
    context: Option<CallContext>,
    provider: &str,
    requested: Option<Duration>,
) -> Result<Entered, PluginError> {
    let mut all = lock(chains);
    let outer = context
        .and_then(|c| all.get(&c.0))
        .filter(|chain| chain.plugins.last().map(String::as_str) == Some(caller))
        .cloned()
        .unwrap_or_else(|| Chain {
            plugins: vec![caller.to_owned()],
            deadline: None,
        });
    check_chain(&outer.plugins, provider)?;
    let now = Instant::now();
    let left = match outer.deadline {
        Some(deadline) if deadline <= now => {
            return Err(PluginError::TimedOut(format!(
                "the call {} is nested in has no time left",
                outer.plugins.join(" -> ")
            )))
        }
        Some(deadline) => Some(deadline - now),
        None => None,
    };
    let timeout = match (requested, left) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut plugins = outer.plugins;
    plugins.push(provider.to_owned());
    let id = loop {
        let id = fastrand::u64(..);
        if !all.contains_key(&id) {
            break id;
        }
    };
    let deadline = timeout.map(|t| now + t);
    all.insert(id, Chain { plugins, deadline });
    Ok(Entered {
        context: CallContext(id),
        timeout,
        chains: Arc::clone(chains),
    })
}

fn check_chain(plugins: &[String], provider: &str) -> Result<(), PluginError> {
    if plugins.iter().any(|p| p == provider) {
        return Err(PluginError::CallCycle(format!(
            "{} -> {provider}: {provider} is already waiting in this chain of calls",
            plugins.join(" -> ")
        )));
    }
    if plugins.len() >= MAX_CHAIN {
        return Err(PluginError::CallCycle(format!(
            "{} -> {provider}: a chain of more than {MAX_CHAIN} plugins",
            plugins.join(" -> ")
        )));
    }
    Ok(())
}

/// What `caller` learns of `service`: who provides it, or why it may not or cannot call it.
///
/// # Errors
/// [`PluginError::Forbidden`] when its manifest does not list the service,
/// [`PluginError::Unavailable`] when no loaded plugin provides it.
fn lookup(backend: &dyn Backend, caller: &str, service: &str) -> Result<ServiceInfo, PluginError> {
    let Some(required) = backend.permission(caller, service) else {
        return Err(PluginError::Forbidden(format!(
            "plugin {caller} may not call service {service:?}: it is not in its manifest's \
             requires or optional_requires"
        )));
    };
    let Some(provider) = backend.provider(service) else {
        return Err(PluginError::Unavailable(format!(
            "service {service:?} is not provided by any loaded plugin"
        )));
    };
    Ok(ServiceInfo {
        service: service.to_owned(),
        provider,
        required,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(names: &[&str]) -> Chains {
        let chains: Chains = Arc::default();
        let plugins = names.iter().map(|s| (*s).to_owned()).collect();
        lock(&chains).insert(
            1,
            Chain {
                plugins,
                deadline: None,
            },
        );
        chains
    }

    #[test]
    fn a_call_back_into_the_chain_is_a_cycle_and_a_fresh_call_is_not() {
        let chains = chain(&["a", "b"]);
        let err = enter(&chains, "b", Some(CallContext(1)), "a", None).err();
        assert!(
            matches!(&err, Some(PluginError::CallCycle(m)) if m.contains("a -> b -> a")),
            "{err:?}"
        );
        // Positive control: the same call without the context starts a chain of its own.
        assert!(enter(&chains, "b", None, "a", None).is_ok());
        // A context that is not the caller's own is ignored (a forged or stale one).
        assert!(enter(&chains, "c", Some(CallContext(1)), "a", None).is_ok());
    }

    #[test]
    fn chains_are_bounded_and_entries_leave_when_the_call_ends() {
        let names: Vec<String> = (0..MAX_CHAIN).map(|i| format!("p{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let chains = chain(&refs);
        let last = refs[MAX_CHAIN - 1];
        let err = enter(&chains, last, Some(CallContext(1)), "x", None).err();
        assert!(matches!(err, Some(PluginError::CallCycle(_))), "{err:?}");
        let short = chain(&refs[..MAX_CHAIN - 1]);
        let entered = enter(&short, refs[MAX_CHAIN - 2], Some(CallContext(1)), "x", None);
        let entered = entered.expect("one below the bound is admitted");
        assert_eq!(lock(&short).len(), 2);
        drop(entered);
        assert_eq!(lock(&short).len(), 1);
    }

    #[tokio::test]
    async fn a_nested_call_gets_no_more_time_than_its_chain_has_left() {
        let chains = chain(&["a"]);
        let outer = enter(&chains, "a", None, "b", Some(Duration::from_secs(10))).unwrap();
        let inner = enter(
            &chains,
            "b",
            Some(outer.context),
            "c",
            Some(Duration::from_secs(60)),
        );
        let inner = inner.unwrap();
        assert!(inner.timeout.unwrap() <= Duration::from_secs(10));
        let free = enter(&chains, "b", Some(outer.context), "c", None).unwrap();
        assert!(free.timeout.unwrap() <= Duration::from_secs(10));
    }

    #[test]
    fn tokens_name_their_plugin_and_die_with_their_grant() {
        let dir = tempfile::tempdir().unwrap();
        let services = Services::new(dir.path());
        let token = "t".repeat(32);
        lock(&services.tokens).insert(token.clone(), "consumer".into());
        assert_eq!(
            caller_of(&services.tokens, &token).as_deref(),
            Some("consumer")
        );
        assert_eq!(caller_of(&services.tokens, "wrong"), None);
        let grant = Grant {
            token: token.clone(),
            socket: PathBuf::new(),
            tokens: Arc::downgrade(&services.tokens),
        };
        drop(grant);
        assert_eq!(caller_of(&services.tokens, &token), None);
    }
}
