//! Named policies from a file, and their reload.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use buttress_bulkhead::BulkheadConfig;
use buttress_circuit_breaker::CircuitBreakerConfig;
use buttress_core::{BoxError, ConfigError, Registry};
use buttress_rate_limit::RateLimitConfig;
use buttress_retry::RetryConfig;
use buttress_timeout::{TimeoutConfig, TimeoutLayer};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::layer::{Flavor, FlavorKind, SlotError};
use super::server::{PerClient, ServerPolicy, ServerPolicyLayer};
use super::{Generic, Grpc, Http, Policy, PolicyLayer, SlotTimeout};

/// An error of a policy file, of a policy in it, or of a reload: where
/// (the path of the field, `policies.api.retry.max_attempts`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    kind: PolicyErrorKind,
    path: String,
    reason: String,
}

/// What kind of [`PolicyError`] it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyErrorKind {
    /// The file could not be read.
    Io,
    /// The text is not a policy file: a syntax error, an unknown field, a
    /// value of the wrong type.
    Parse,
    /// A value is out of its range (the pattern's own validation).
    Invalid,
    /// A reload asked for a change that cannot be made to a live instance
    /// (a slot added or removed, another flavor, a window of another
    /// kind): nothing was changed.
    NotLive,
    /// No policy of that name.
    Unknown,
    /// The policy is of another flavor than the one asked for.
    WrongFlavor,
    /// An instance name is taken in the registry already.
    Duplicate,
}

impl PolicyError {
    fn new(kind: PolicyErrorKind, path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            kind,
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// What kind of error.
    pub fn kind(&self) -> PolicyErrorKind {
        self.kind
    }

    /// The path of the field at fault (`policies.api.retry.max_attempts`),
    /// empty when the error is about the whole file.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Why.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    fn from_slot(policy_path: &str, e: SlotError) -> Self {
        let kind = if e.error.reason().contains("registered already") {
            PolicyErrorKind::Duplicate
        } else {
            PolicyErrorKind::Invalid
        };
        Self::new(
            kind,
            format!("{policy_path}.{}.{}", e.slot, e.error.field()),
            e.error.reason(),
        )
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for PolicyError {}

/// A slot in a file: a table (or, for a timeout, a bare duration) sets it,
/// `false` empties it; absent, it keeps the preset's.
#[derive(Debug, Clone, PartialEq)]
enum Slot<T> {
    Off,
    On(T),
}

/// What a slot's value may be written as, for error messages.
trait SlotValue {
    const EXPECTING: &'static str = "a table, or false to leave the slot empty";
}

impl SlotValue for RetryConfig {}
impl SlotValue for CircuitBreakerConfig {}
impl SlotValue for RateLimitConfig {}
impl SlotValue for BulkheadConfig {}
impl SlotValue for PerClient {}
impl SlotValue for TimeoutValue {
    const EXPECTING: &'static str =
        "a duration such as \"30s\", a timeout table, or false to leave the slot empty";
}

impl<'de, T: Deserialize<'de> + SlotValue> Deserialize<'de> for Slot<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + SlotValue> Visitor<'de> for V<T> {
            type Value = Slot<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(T::EXPECTING)
            }

            fn visit_bool<E: de::Error>(self, on: bool) -> Result<Slot<T>, E> {
                if on {
                    Err(E::custom(
                        "`true` is not a setting: give a table, or false to leave the slot empty",
                    ))
                } else {
                    Ok(Slot::Off)
                }
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Slot<T>, E> {
                T::deserialize(de::value::StrDeserializer::new(s)).map(Slot::On)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Slot<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Slot::On)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A timeout slot's value: a table or a bare duration.
#[derive(Debug, Clone, PartialEq)]
struct TimeoutValue(TimeoutConfig);

impl<'de> Deserialize<'de> for TimeoutValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TimeoutValue;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", or a timeout table")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<TimeoutValue, E> {
                let timeout = humantime::parse_duration(s).map_err(E::custom)?;
                Ok(TimeoutValue(TimeoutConfig {
                    timeout,
                    ..TimeoutConfig::default()
                }))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TimeoutValue, A::Error> {
                TimeoutConfig::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(TimeoutValue)
            }
        }
        d.deserialize_any(V)
    }
}

/// A preset a file's policy starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
enum Preset {
    #[default]
    None,
    Api,
    Ai,
    Database,
    External,
    Critical,
}

/// One `[policies.<name>]` of a file.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Entry {
    preset: Preset,
    flavor: FlavorKind,
    timeout: Option<Slot<TimeoutValue>>,
    retry: Option<Slot<RetryConfig>>,
    circuit_breaker: Option<Slot<CircuitBreakerConfig>>,
    rate_limit: Option<Slot<RateLimitConfig>>,
    bulkhead: Option<Slot<BulkheadConfig>>,
    attempt_timeout: Option<Slot<TimeoutValue>>,
}

fn apply<T>(slot: Option<Slot<T>>, to: &mut Option<T>) {
    match slot {
        None => {}
        Some(Slot::Off) => *to = None,
        Some(Slot::On(v)) => *to = Some(v),
    }
}

impl Entry {
    fn resolve(self) -> (FlavorKind, Policy) {
        let mut p = match self.preset {
            Preset::None => Policy::new(),
            Preset::Api => Policy::api(),
            Preset::Ai => Policy::ai(),
            Preset::Database => Policy::database(),
            Preset::External => Policy::external(),
            Preset::Critical => Policy::critical(),
        };
        apply(self.timeout.map(|s| s.map(|t| t.0)), &mut p.timeout);
        apply(self.retry, &mut p.retry);
        apply(self.circuit_breaker, &mut p.circuit_breaker);
        apply(self.rate_limit, &mut p.rate_limit);
        apply(self.bulkhead, &mut p.bulkhead);
        apply(
            self.attempt_timeout.map(|s| s.map(|t| t.0)),
            &mut p.attempt_timeout,
        );
        (self.flavor, p)
    }
}

impl<T> Slot<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Slot<U> {
        match self {
            Slot::Off => Slot::Off,
            Slot::On(v) => Slot::On(f(v)),
        }
    }
}

/// One `[servers.<name>]` of a file: the server preset, changed where
/// the file says.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ServerEntry {
    per_client: Option<Slot<PerClient>>,
    bulkhead: Option<Slot<BulkheadConfig>>,
    timeout: Option<Slot<TimeoutValue>>,
}

impl ServerEntry {
    fn resolve(self) -> ServerPolicy {
        let mut p = ServerPolicy::default();
        apply(self.per_client, &mut p.per_client);
        apply(self.bulkhead, &mut p.bulkhead);
        apply(self.timeout.map(|s| s.map(|t| t.0)), &mut p.timeout);
        p
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct File {
    policies: BTreeMap<String, Entry>,
    servers: BTreeMap<String, ServerEntry>,
}

/// The contents of a policy file, parsed and resolved (presets applied),
/// not built yet: what [`PolicySet::new`] builds and
/// [`PolicySet::reload`] applies.
///
/// The format, in TOML (YAML and JSON have the same shape):
///
/// ```toml
/// [policies.catalog]
/// preset = "api"        # api, ai, database, external, critical; none by default
/// flavor = "http"       # generic (default), http or grpc
/// timeout = "10s"       # a slot: a table, a bare duration for timeouts,
/// rate_limit = false    # or false to leave it empty; absent, the preset's
///
/// [policies.catalog.circuit_breaker]
/// failure_rate_threshold = 25.0
/// window_size = 50
/// minimum_calls = 20
/// wait_in_open = "30s"
///
/// [servers.public]      # the server preset, changed where the file says
/// per_client = { rate = "50/1s", burst = 100 }
/// bulkhead = { max_concurrent = 128, max_queue = 256, max_wait = "50ms" }
/// ```
///
/// A slot given in the file replaces the preset's slot as a whole (its
/// absent fields take the pattern's defaults, not the preset's).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PolicySpec {
    policies: BTreeMap<String, (FlavorKind, Policy)>,
    servers: BTreeMap<String, ServerPolicy>,
}

impl PolicySpec {
    /// Reads a TOML policy file's text.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let d = toml::Deserializer::parse(text)
            .map_err(|e| PolicyError::new(PolicyErrorKind::Parse, "", e.to_string()))?;
        Self::parse(d)
    }

    /// Reads a YAML policy file's text.
    pub fn from_yaml(text: &str) -> Result<Self, PolicyError> {
        Self::parse(serde_yaml_ng::Deserializer::from_str(text))
    }

    /// Reads a JSON policy file's text.
    pub fn from_json(text: &str) -> Result<Self, PolicyError> {
        let mut d = serde_json::Deserializer::from_str(text);
        let spec = Self::parse(&mut d)?;
        d.end()
            .map_err(|e| PolicyError::new(PolicyErrorKind::Parse, "", e.to_string()))?;
        Ok(spec)
    }

    /// Reads a policy file, in the format its extension names (`.toml`,
    /// `.yaml` or `.yml`, `.json`).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, PolicyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            PolicyError::new(
                PolicyErrorKind::Io,
                "",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Self::from_toml(&text),
            Some("yaml" | "yml") => Self::from_yaml(&text),
            Some("json") => Self::from_json(&text),
            _ => Err(PolicyError::new(
                PolicyErrorKind::Parse,
                "",
                format!(
                    "{}: the extension must be .toml, .yaml, .yml or .json",
                    path.display()
                ),
            )),
        }
    }

    fn parse<'de, D>(d: D) -> Result<Self, PolicyError>
    where
        D: Deserializer<'de>,
        D::Error: fmt::Display,
    {
        let file: File = serde_path_to_error::deserialize(d).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            PolicyError::new(PolicyErrorKind::Parse, path, e.into_inner().to_string())
        })?;
        Ok(Self {
            policies: file
                .policies
                .into_iter()
                .map(|(name, entry)| (name, entry.resolve()))
                .collect(),
            servers: file
                .servers
                .into_iter()
                .map(|(name, entry)| (name, entry.resolve()))
                .collect(),
        })
    }

    /// Adds (or replaces) a client policy of the generic flavor.
    pub fn policy(mut self, name: impl Into<String>, policy: Policy) -> Self {
        self.policies
            .insert(name.into(), (FlavorKind::Generic, policy));
        self
    }

    /// Adds (or replaces) a client policy of flavor `F`.
    pub fn policy_of<F: Flavor>(mut self, name: impl Into<String>, policy: Policy) -> Self {
        self.policies.insert(name.into(), (F::kind(), policy));
        self
    }

    /// Adds (or replaces) a server policy.
    pub fn server(mut self, name: impl Into<String>, policy: ServerPolicy) -> Self {
        self.servers.insert(name.into(), policy);
        self
    }

    /// The client policies, by name, with their flavors.
    pub fn policies(&self) -> impl Iterator<Item = (&str, FlavorKind, &Policy)> {
        self.policies.iter().map(|(n, (k, p))| (n.as_str(), *k, p))
    }

    /// The server policies, by name.
    pub fn servers(&self) -> impl Iterator<Item = (&str, &ServerPolicy)> {
        self.servers.iter().map(|(n, p)| (n.as_str(), p))
    }
}

/// A built client policy of one of the three flavors.
#[derive(Clone, Debug)]
enum Built {
    Generic(PolicyLayer<Generic>),
    Http(PolicyLayer<Http>),
    Grpc(PolicyLayer<Grpc>),
}

impl Built {
    fn build(
        name: &str,
        kind: FlavorKind,
        policy: &Policy,
        registry: Option<&Registry>,
    ) -> Result<Self, SlotError> {
        Ok(match kind {
            FlavorKind::Generic => Built::Generic(policy.build_slots(name, registry)?),
            FlavorKind::Http => Built::Http(policy.build_slots(name, registry)?),
            FlavorKind::Grpc => Built::Grpc(policy.build_slots(name, registry)?),
        })
    }
}

#[derive(Debug)]
struct State {
    spec: PolicySpec,
    clients: BTreeMap<String, Built>,
    servers: BTreeMap<String, ServerPolicyLayer>,
}

/// Named policies, built once and registered in a [`Registry`]: layers
/// by name for services, [`execute`](PolicySet::execute) by name for plain
/// async code, and [`reload`](PolicySet::reload) to change the live
/// instances' settings from a new version of the file.
///
/// Cheap to clone: clones share the policies.
///
/// ```
/// use buttress::policy::{Generic, PolicySet, PolicySpec};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), buttress::BoxError> {
/// let spec = PolicySpec::from_toml(r#"
///     [policies.database]
///     preset = "database"
///     retry = { max_attempts = 2 }
/// "#)?;
/// let registry = buttress::Registry::new();
/// let policies = PolicySet::new(spec, &registry)?;
///
/// // A layer by name...
/// let svc = ServiceBuilder::new()
///     .layer(policies.layer::<Generic>("database")?)
///     .service_fn(|id: u32| async move { Ok::<_, std::io::Error>(id) });
/// assert_eq!(svc.oneshot(7).await?, 7);
/// // ...or plain async code.
/// let n = policies.execute("database", || async { Ok::<_, std::io::Error>(42) }).await?;
/// assert_eq!(n, 42);
/// assert!(registry.names().contains(&"database.retry".to_owned()));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PolicySet {
    registry: Registry,
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("PolicySet")
            .field("policies", &state.clients.keys().collect::<Vec<_>>())
            .field("servers", &state.servers.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn policy_path(name: &str) -> String {
    format!("policies.{name}")
}

fn server_path(name: &str) -> String {
    format!("servers.{name}")
}

impl PolicySet {
    /// Builds every policy of `spec`, registering its instances in
    /// `registry` (as `"<policy>.<slot>"`). Nothing stays registered when
    /// one fails.
    pub fn new(spec: PolicySpec, registry: &Registry) -> Result<Self, PolicyError> {
        let mut registered = Vec::new();
        let built = Self::build_all(&spec, registry, &mut registered);
        match built {
            Ok((clients, servers)) => Ok(Self {
                registry: registry.clone(),
                state: Arc::new(Mutex::new(State {
                    spec,
                    clients,
                    servers,
                })),
            }),
            Err(e) => {
                unregister(registry, &registered);
                Err(e)
            }
        }
    }

    /// Reads a policy file (see [`PolicySpec::from_path`]) and builds it.
    pub fn from_path(path: impl AsRef<Path>, registry: &Registry) -> Result<Self, PolicyError> {
        Self::new(PolicySpec::from_path(path)?, registry)
    }

    #[allow(clippy::type_complexity)]
    fn build_all(
        spec: &PolicySpec,
        registry: &Registry,
        registered: &mut Vec<String>,
    ) -> Result<(BTreeMap<String, Built>, BTreeMap<String, ServerPolicyLayer>), PolicyError> {
        let mut clients = BTreeMap::new();
        for (name, (kind, policy)) in &spec.policies {
            let before = registry.names();
            let built = Built::build(name, *kind, policy, Some(registry));
            registered.extend(new_names(registry, &before));
            clients.insert(
                name.clone(),
                built.map_err(|e| PolicyError::from_slot(&policy_path(name), e))?,
            );
        }
        let mut servers = BTreeMap::new();
        for (name, policy) in &spec.servers {
            let before = registry.names();
            let built = policy.build_slots(name, Some(registry));
            registered.extend(new_names(registry, &before));
            servers.insert(
                name.clone(),
                built.map_err(|e| PolicyError::from_slot(&server_path(name), e))?,
            );
        }
        Ok((clients, servers))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The layer of the client policy `name`, of flavor `F` (the flavor
    /// the file gave it).
    pub fn layer<F: Flavor>(&self, name: &str) -> Result<PolicyLayer<F>, PolicyError> {
        let state = self.lock();
        let built = state.clients.get(name).ok_or_else(|| {
            PolicyError::new(
                PolicyErrorKind::Unknown,
                policy_path(name),
                "no such policy",
            )
        })?;
        built
            .as_any()
            .downcast_ref::<PolicyLayer<F>>()
            .cloned()
            .ok_or_else(|| {
                PolicyError::new(
                    PolicyErrorKind::WrongFlavor,
                    format!("{}.flavor", policy_path(name)),
                    format!("the policy is {}, not {}", built.kind(), F::kind()),
                )
            })
    }

    /// The layer of the server policy `name`.
    pub fn server(&self, name: &str) -> Result<ServerPolicyLayer, PolicyError> {
        self.lock().servers.get(name).cloned().ok_or_else(|| {
            PolicyError::new(
                PolicyErrorKind::Unknown,
                server_path(name),
                "no such server policy",
            )
        })
    }

    /// The current settings of the client policy `name` (as last built or
    /// reloaded).
    pub fn policy(&self, name: &str) -> Option<Policy> {
        self.lock().spec.policies.get(name).map(|(_, p)| p.clone())
    }

    /// The spec the set was built from or last reloaded with.
    pub fn spec(&self) -> PolicySpec {
        self.lock().spec.clone()
    }

    /// The registry the instances are registered in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Runs `op` under the generic client policy `name`; see
    /// [`PolicyLayer::execute`].
    pub async fn execute<Op, Fut, T, E>(&self, name: &str, op: Op) -> Result<T, BoxError>
    where
        Op: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<BoxError>,
    {
        let layer = self.layer::<Generic>(name)?;
        layer.execute(op).await
    }

    /// Applies a new version of the policies to the live instances,
    /// through their handles: thresholds, limits, timeouts, retry
    /// settings. In-flight calls finish under the values they started
    /// with (each pattern's `reconfigure` says what that means); new calls
    /// see the new ones.
    ///
    /// All or nothing: every change is validated first; a change that
    /// cannot be made live (a slot added or removed, another flavor, a
    /// breaker window of another kind, a rate limiter's algorithm) fails
    /// the reload with a [`NotLive`](PolicyErrorKind::NotLive) error naming
    /// it, and nothing is changed. Policies new in `spec` are built and
    /// registered; policies gone from it are removed from the set and the
    /// registry (services already built from them keep working).
    pub fn reload(&self, spec: PolicySpec) -> Result<ReloadReport, PolicyError> {
        let mut state = self.lock();
        let mut report = ReloadReport::default();

        // 1. Validate every new setting, and refuse what cannot change live.
        let mut changes: Vec<Change> = Vec::new();
        for (name, (kind, policy)) in &spec.policies {
            let path = policy_path(name);
            Built::build(name, *kind, policy, None)
                .map_err(|e| PolicyError::from_slot(&path, e))?;
            let Some((old_kind, old)) = state.spec.policies.get(name) else {
                continue;
            };
            if old_kind != kind {
                return Err(PolicyError::new(
                    PolicyErrorKind::NotLive,
                    format!("{path}.flavor"),
                    format!("a live policy cannot change from {old_kind} to {kind}"),
                ));
            }
            let built = &state.clients[name];
            changes.extend(client_changes(name, built, old, policy)?);
        }
        for (name, policy) in &spec.servers {
            let path = server_path(name);
            policy
                .build_slots(name, None)
                .map_err(|e| PolicyError::from_slot(&path, e))?;
            let Some(old) = state.spec.servers.get(name) else {
                continue;
            };
            changes.extend(server_changes(name, &state.servers[name], old, policy)?);
        }

        // 2. Build and register the new policies.
        let mut registered = Vec::new();
        let mut added_clients = BTreeMap::new();
        let mut added_servers = BTreeMap::new();
        let added = (|| {
            for (name, (kind, policy)) in &spec.policies {
                if state.spec.policies.contains_key(name) {
                    continue;
                }
                let before = self.registry.names();
                let built = Built::build(name, *kind, policy, Some(&self.registry));
                registered.extend(new_names(&self.registry, &before));
                added_clients.insert(
                    name.clone(),
                    built.map_err(|e| PolicyError::from_slot(&policy_path(name), e))?,
                );
            }
            for (name, policy) in &spec.servers {
                if state.spec.servers.contains_key(name) {
                    continue;
                }
                let before = self.registry.names();
                let built = policy.build_slots(name, Some(&self.registry));
                registered.extend(new_names(&self.registry, &before));
                added_servers.insert(
                    name.clone(),
                    built.map_err(|e| PolicyError::from_slot(&server_path(name), e))?,
                );
            }
            Ok::<_, PolicyError>(())
        })();
        if let Err(e) = added {
            unregister(&self.registry, &registered);
            return Err(e);
        }

        // 3. Every change must apply before any is made...
        for change in &changes {
            if let Err(e) = change.check() {
                unregister(&self.registry, &registered);
                return Err(change.error(&e));
            }
        }
        // ...and if one is refused all the same (a concurrent change
        // through a handle), the ones made are undone.
        for (i, change) in changes.iter().enumerate() {
            if let Err(e) = change.apply() {
                for done in changes[..i].iter().rev() {
                    // The old settings were live a moment ago: they apply.
                    let _ = done.undo();
                }
                unregister(&self.registry, &registered);
                return Err(change.error(&e));
            }
            report.changed.push(change.path.clone());
        }

        // 4. Forget the policies the new spec no longer has.
        let gone: Vec<String> = state
            .clients
            .keys()
            .filter(|n| !spec.policies.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(built) = state.clients.remove(&name) {
                unregister(&self.registry, &built.instance_names());
            }
            report.removed.push(policy_path(&name));
        }
        let gone: Vec<String> = state
            .servers
            .keys()
            .filter(|n| !spec.servers.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            state.servers.remove(&name);
            unregister(
                &self.registry,
                &["per_client", "bulkhead", "timeout"].map(|s| format!("{name}.{s}")),
            );
            report.removed.push(server_path(&name));
        }
        for (name, built) in added_clients {
            report.added.push(policy_path(&name));
            state.clients.insert(name, built);
        }
        for (name, built) in added_servers {
            report.added.push(server_path(&name));
            state.servers.insert(name, built);
        }
        state.spec = spec;
        Ok(report)
    }

    /// Reads a policy file and [`reload`](PolicySet::reload)s it.
    pub fn reload_path(&self, path: impl AsRef<Path>) -> Result<ReloadReport, PolicyError> {
        self.reload(PolicySpec::from_path(path)?)
    }
}

/// What a [`PolicySet::reload`] did, by path (`policies.api.retry`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadReport {
    /// Slots whose live instance took new settings.
    pub changed: Vec<String>,
    /// Policies built and registered.
    pub added: Vec<String>,
    /// Policies removed from the set.
    pub removed: Vec<String>,
}

impl ReloadReport {
    /// `true` when the reload changed nothing.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.added.is_empty() && self.removed.is_empty()
    }
}

fn new_names(registry: &Registry, before: &[String]) -> Vec<String> {
    registry
        .names()
        .into_iter()
        .filter(|n| !before.contains(n))
        .collect()
}

fn unregister(registry: &Registry, names: &[String]) {
    for n in names {
        registry.remove(n);
    }
}

/// One slot's new settings, for its live instance.
struct Change {
    path: String,
    run: Box<dyn Fn(Step) -> Result<(), ConfigError> + Send>,
}

#[derive(Clone, Copy)]
enum Step {
    /// Would the new settings apply? Changes nothing.
    Check,
    /// Apply the new settings.
    Apply,
    /// Put the old settings back.
    Undo,
}

impl Change {
    fn check(&self) -> Result<(), ConfigError> {
        (self.run)(Step::Check)
    }

    fn apply(&self) -> Result<(), ConfigError> {
        (self.run)(Step::Apply)
    }

    fn undo(&self) -> Result<(), ConfigError> {
        (self.run)(Step::Undo)
    }

    fn error(&self, e: &ConfigError) -> PolicyError {
        let kind = if e.reason().contains("live instance") {
            PolicyErrorKind::NotLive
        } else {
            PolicyErrorKind::Invalid
        };
        PolicyError::new(kind, format!("{}.{}", self.path, e.field()), e.reason())
    }
}

fn client_changes(
    name: &str,
    built: &Built,
    old: &Policy,
    new: &Policy,
) -> Result<Vec<Change>, PolicyError> {
    match built {
        Built::Generic(l) => slot_changes(name, l, old, new),
        Built::Http(l) => slot_changes(name, l, old, new),
        Built::Grpc(l) => slot_changes(name, l, old, new),
    }
}

fn slot_changes<F: Flavor>(
    name: &str,
    layer: &PolicyLayer<F>,
    old: &Policy,
    new: &Policy,
) -> Result<Vec<Change>, PolicyError> {
    let path = policy_path(name);
    let mut out = Vec::new();
    let timeout = |l: Option<&TimeoutLayer<SlotTimeout>>| l.map(TimeoutLayer::handle);
    let o = old;
    let n = new;
    slot(
        &mut out,
        &path,
        "timeout",
        &o.timeout,
        &n.timeout,
        timeout(layer.timeout()),
    )?;
    let retry = layer.retry().map(|l| l.handle());
    slot(&mut out, &path, "retry", &o.retry, &n.retry, retry)?;
    let breaker = layer.circuit_breaker().map(|l| l.handle());
    let (ob, nb) = (&o.circuit_breaker, &n.circuit_breaker);
    slot(&mut out, &path, "circuit_breaker", ob, nb, breaker)?;
    let rate = layer.rate_limit().map(|l| l.handle());
    slot(
        &mut out,
        &path,
        "rate_limit",
        &o.rate_limit,
        &n.rate_limit,
        rate,
    )?;
    let bulkhead = layer.bulkhead().map(|l| l.handle());
    slot(
        &mut out,
        &path,
        "bulkhead",
        &o.bulkhead,
        &n.bulkhead,
        bulkhead,
    )?;
    let attempt = timeout(layer.attempt_timeout());
    let (oa, na) = (&o.attempt_timeout, &n.attempt_timeout);
    slot(&mut out, &path, "attempt_timeout", oa, na, attempt)?;
    Ok(out)
}

fn server_changes(
    name: &str,
    layer: &ServerPolicyLayer,
    old: &ServerPolicy,
    new: &ServerPolicy,
) -> Result<Vec<Change>, PolicyError> {
    let path = server_path(name);
    let mut out = Vec::new();
    if let (Some(o), Some(n)) = (&old.per_client, &new.per_client) {
        for (field, differs) in [
            ("trusted_proxies", o.trusted_proxies != n.trusted_proxies),
            ("max_keys", o.max_keys != n.max_keys),
        ] {
            if differs {
                return Err(PolicyError::new(
                    PolicyErrorKind::NotLive,
                    format!("{path}.per_client.{field}"),
                    "cannot change on a live instance: build a new layer instead",
                ));
            }
        }
    }
    let as_config = |p: &Option<PerClient>| {
        p.as_ref().map(|p| RateLimitConfig {
            burst: p.burst,
            ..RateLimitConfig::new(p.rate)
        })
    };
    let (op, np) = (as_config(&old.per_client), as_config(&new.per_client));
    let per_client = layer.per_client().map(|l| l.handle());
    slot(&mut out, &path, "per_client", &op, &np, per_client)?;
    let bulkhead = layer.bulkhead().map(|l| l.handle());
    slot(
        &mut out,
        &path,
        "bulkhead",
        &old.bulkhead,
        &new.bulkhead,
        bulkhead,
    )?;
    let timeout = layer.timeout().map(|l| l.handle());
    slot(
        &mut out,
        &path,
        "timeout",
        &old.timeout,
        &new.timeout,
        timeout,
    )?;
    Ok(out)
}

/// A live instance's handle, as a reload uses it.
trait Live: Send + 'static {
    type Config: Clone + PartialEq + Send + 'static;
    fn name(&self) -> &str;
    fn rename(config: &mut Self::Config, name: String);
    fn check(&self, config: &Self::Config) -> Result<(), ConfigError>;
    fn apply(&self, config: &Self::Config) -> Result<(), ConfigError>;
}

macro_rules! live {
    ($($handle:ty => $config:ty),* $(,)?) => {$(
        impl Live for $handle {
            type Config = $config;
            fn name(&self) -> &str {
                <$handle>::name(self)
            }
            fn rename(config: &mut $config, name: String) {
                config.name = name;
            }
            fn check(&self, config: &$config) -> Result<(), ConfigError> {
                self.check_reconfigure(config)
            }
            fn apply(&self, config: &$config) -> Result<(), ConfigError> {
                self.reconfigure(config)
            }
        }
    )*};
}

live! {
    buttress_timeout::TimeoutHandle => TimeoutConfig,
    buttress_retry::RetryHandle => RetryConfig,
    buttress_circuit_breaker::CircuitBreakerHandle => CircuitBreakerConfig,
    buttress_rate_limit::RateLimitHandle => RateLimitConfig,
    buttress_rate_limit::KeyedRateLimitHandle<std::net::IpAddr> => RateLimitConfig,
    buttress_bulkhead::BulkheadHandle => BulkheadConfig,
}

/// One slot of a reload: refused when it appears or disappears (its
/// services were built with or without it); a change when its settings
/// differ, the configs carrying the live instance's name.
fn slot<H: Live>(
    out: &mut Vec<Change>,
    path: &str,
    slot: &str,
    old: &Option<H::Config>,
    new: &Option<H::Config>,
    handle: Option<H>,
) -> Result<(), PolicyError> {
    match (old, new, handle) {
        (Some(_), None, _) => Err(PolicyError::new(
            PolicyErrorKind::NotLive,
            format!("{path}.{slot}"),
            "a slot cannot be removed from a live policy: its services were built with it",
        )),
        (None, Some(_), _) => Err(PolicyError::new(
            PolicyErrorKind::NotLive,
            format!("{path}.{slot}"),
            "a slot cannot be added to a live policy: its services were built without it",
        )),
        (Some(o), Some(n), Some(h)) if o != n => {
            let named = |c: &H::Config| {
                let mut c = c.clone();
                H::rename(&mut c, h.name().to_owned());
                c
            };
            let (o, n) = (named(o), named(n));
            out.push(Change {
                path: format!("{path}.{slot}"),
                run: Box::new(move |step| match step {
                    Step::Check => h.check(&n),
                    Step::Apply => h.apply(&n),
                    Step::Undo => h.apply(&o),
                }),
            });
            Ok(())
        }
        _ => Ok(()),
    }
}

impl Built {
    fn kind(&self) -> FlavorKind {
        match self {
            Built::Generic(_) => FlavorKind::Generic,
            Built::Http(_) => FlavorKind::Http,
            Built::Grpc(_) => FlavorKind::Grpc,
        }
    }

    fn instance_names(&self) -> Vec<String> {
        match self {
            Built::Generic(l) => l.instance_names(),
            Built::Http(l) => l.instance_names(),
            Built::Grpc(l) => l.instance_names(),
        }
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        match self {
            Built::Generic(l) => l,
            Built::Http(l) => l,
            Built::Grpc(l) => l,
        }
    }
}

/// Reloads a [`PolicySet`] when its file changes; stops when dropped. Made
/// by [`PolicySet::watch`].
#[cfg(feature = "config-watch")]
#[cfg_attr(docsrs, doc(cfg(feature = "config-watch")))]
pub struct PolicyWatcher {
    _watcher: notify::RecommendedWatcher,
}

#[cfg(feature = "config-watch")]
impl fmt::Debug for PolicyWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyWatcher").finish_non_exhaustive()
    }
}

/// How long a watched file must stay unchanged before it is read.
#[cfg(feature = "config-watch")]
const SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

#[cfg(feature = "config-watch")]
impl PolicySet {
    /// Watches the policy file at `path` (its directory, so that editors
    /// that replace the file are seen too) and [`reload`](PolicySet::reload)s
    /// the set each time it changes, handing each outcome to `on_reload`
    /// (a file that does not parse, or a change that cannot apply live,
    /// leaves the policies as they were: log it there). Reloads run on the
    /// watcher's own thread; no runtime is needed.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), buttress::policy::PolicyError> {
    /// use buttress::policy::PolicySet;
    ///
    /// let registry = buttress::Registry::new();
    /// let policies = PolicySet::from_path("policies.toml", &registry)?;
    /// let _watcher = policies.watch("policies.toml", |outcome| match outcome {
    ///     Ok(report) => eprintln!("policies reloaded: {report:?}"),
    ///     Err(e) => eprintln!("policies not reloaded: {e}"),
    /// })?;
    /// // ... serve; the policies follow the file until `_watcher` is dropped.
    /// # Ok(())
    /// # }
    /// ```
    pub fn watch(
        &self,
        path: impl AsRef<Path>,
        mut on_reload: impl FnMut(Result<ReloadReport, PolicyError>) + Send + 'static,
    ) -> Result<PolicyWatcher, PolicyError> {
        use notify::{EventKind, RecursiveMode, Watcher};

        let path = path.as_ref().to_path_buf();
        let io = |e: notify::Error| {
            PolicyError::new(
                PolicyErrorKind::Io,
                "",
                format!("cannot watch {}: {e}", path.display()),
            )
        };
        let file_name = path.file_name().map(|n| n.to_owned()).ok_or_else(|| {
            PolicyError::new(
                PolicyErrorKind::Io,
                "",
                format!("{} names no file", path.display()),
            )
        })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let set = self.clone();
        let file = path.clone();
        // The watcher's callback only signals; a thread of its own waits
        // for the writes to settle, so that a file being written (emptied
        // first, by most editors and by `fs::write`) is never read half
        // way: reading an empty file would remove every policy.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if !matches!(
                    event.kind,
                    EventKind::Create(_) | EventKind::Modify(_) | EventKind::Any
                ) {
                    return;
                }
                if event
                    .paths
                    .iter()
                    .any(|p| p.file_name() == Some(file_name.as_os_str()))
                {
                    let _ = tx.send(());
                }
            })
            .map_err(io)?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(io)?;
        let mut last: Option<String> = std::fs::read_to_string(&path).ok();
        std::thread::Builder::new()
            .name("buttress-policy-watch".into())
            .spawn(move || {
                // Ends when the watcher (and with it the sender) is dropped.
                while rx.recv().is_ok() {
                    // Quiet for `SETTLE` since the last event.
                    while rx.recv_timeout(SETTLE).is_ok() {}
                    let Ok(text) = std::fs::read_to_string(&file) else {
                        continue;
                    };
                    // One save is often several events: reload only when
                    // the text changed since the last reload.
                    if last.as_deref() == Some(text.as_str()) {
                        continue;
                    }
                    let outcome = set.reload_path(&file);
                    if outcome.is_ok() {
                        last = Some(text);
                    }
                    on_reload(outcome);
                }
            })
            .map_err(|e| {
                PolicyError::new(
                    PolicyErrorKind::Io,
                    "",
                    format!("cannot start the watcher's thread: {e}"),
                )
            })?;
        Ok(PolicyWatcher { _watcher: watcher })
    }
}

static GLOBAL: std::sync::OnceLock<PolicySet> = std::sync::OnceLock::new();

/// The process-wide policy set, which `#[resilient(policy = "...")]`
/// uses: the one installed with [`PolicySet::install_global`] or, if none
/// was installed before the first use, one with the five client presets
/// under their names (`api`, `ai`, `database`, `external`, `critical`),
/// registered in a registry of its own ([`PolicySet::registry`]).
pub fn global() -> &'static PolicySet {
    GLOBAL.get_or_init(|| {
        let spec = PolicySpec::default()
            .policy("api", Policy::api())
            .policy("ai", Policy::ai())
            .policy("database", Policy::database())
            .policy("external", Policy::external())
            .policy("critical", Policy::critical());
        PolicySet::new(spec, &Registry::new()).expect("the presets build")
    })
}

impl PolicySet {
    /// Makes this set the process-wide one ([`global`]), for
    /// `#[resilient]` functions. Only once, and before the first use:
    /// otherwise the set comes back as the error. Reload it (it is a
    /// shared handle) to change its policies later.
    ///
    /// ```
    /// use buttress::policy::{Policy, PolicySet, PolicySpec};
    ///
    /// let spec = PolicySpec::default().policy("db", Policy::database());
    /// let set = PolicySet::new(spec, &buttress::Registry::new()).unwrap();
    /// set.install_global().unwrap();
    /// assert!(buttress::policy::global().policy("db").is_some());
    /// ```
    pub fn install_global(self) -> Result<(), PolicySet> {
        GLOBAL.set(self)
    }
}
