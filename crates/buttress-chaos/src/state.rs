//! The state every clone of a chaos layer shares: switch, rates, seed,
//! counters, and the per-call decision.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_core::{ConfigError, Listeners};

use crate::events::{ChaosEvent, FaultKind};
use crate::latency::Latency;
use crate::layer::KIND;
use crate::rng::{threshold, SplitMix64};

/// The rates an instance holds, as plain numbers.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Rates {
    pub(crate) error: f64,
    pub(crate) latency: f64,
    pub(crate) hang: f64,
    pub(crate) abort_body: f64,
    pub(crate) truncate_body: f64,
}

impl Rates {
    /// The rates of the faults that end a call (one of them at most per
    /// call); latency is drawn separately and may come before any of them.
    fn outcome_sum(&self) -> f64 {
        self.error + self.hang + self.abort_body + self.truncate_body
    }

    fn any(&self) -> bool {
        self.outcome_sum() > 0.0 || self.latency > 0.0
    }

    /// Each rate in [0, 1], their sum too, and the body rates zero unless
    /// the layer is an HTTP one.
    pub(crate) fn validate(&self, http: bool) -> Result<(), ConfigError> {
        for (field, rate) in [
            ("error_rate", self.error),
            ("latency_rate", self.latency),
            ("hang_rate", self.hang),
            ("abort_body_rate", self.abort_body),
            ("truncate_body_rate", self.truncate_body),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(ConfigError::new(
                    KIND,
                    field,
                    format!("must be a rate in [0, 1], got {rate}"),
                ));
            }
        }
        if !http {
            for (field, rate) in [
                ("abort_body_rate", self.abort_body),
                ("truncate_body_rate", self.truncate_body),
            ] {
                if rate > 0.0 {
                    return Err(ConfigError::new(
                        KIND,
                        field,
                        "body faults need an HTTP layer: build it with `build_http()`",
                    ));
                }
            }
        }
        let sum = self.outcome_sum();
        // A little slack for rounding: 0.1 + 0.2 + 0.7 is 1.0000000000000002.
        if sum > 1.0 + 1e-9 {
            return Err(ConfigError::new(
                KIND,
                "error_rate",
                format!(
                    "error_rate + hang_rate + abort_body_rate + truncate_body_rate must be at most 1, got {sum}"
                ),
            ));
        }
        Ok(())
    }
}

/// Where a body fault strikes.
#[derive(Debug, Clone)]
pub(crate) struct BodyFault {
    pub(crate) name: Arc<str>,
    /// `AbortedBody` or `TruncatedBody`.
    pub(crate) kind: FaultKind,
    /// Bytes let through before the cut (at a frame boundary).
    pub(crate) after: u64,
}

/// What happens to one call.
#[derive(Debug)]
pub(crate) enum Outcome {
    Pass,
    Error,
    Hang,
    Body(BodyFault),
}

#[derive(Debug)]
pub(crate) struct Decision {
    pub(crate) latency: Option<Duration>,
    pub(crate) outcome: Outcome,
}

pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) http: bool,
    /// `enabled` and some rate above zero: the only thing a call reads
    /// when the layer is off.
    armed: AtomicBool,
    enabled: AtomicBool,
    seed: AtomicU64,
    /// Calls rolled for (selected while armed): the next call's number.
    calls: AtomicU64,
    /// The rates as `f64` bits, in the order of `Rates`' fields.
    error: AtomicU64,
    latency_rate: AtomicU64,
    hang: AtomicU64,
    abort_body: AtomicU64,
    truncate_body: AtomicU64,
    latency: Mutex<Latency>,
    body_after: AtomicU64,
    injected: [AtomicU64; 5],
    /// Serialises the setters, so that a rate validated against the others
    /// is stored against the same others.
    settings: Mutex<()>,
    pub(crate) listeners: Listeners<ChaosEvent>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chaos")
            .field("name", &self.name)
            .field("enabled", &self.enabled.load(Relaxed))
            .field("rates", &self.rates())
            .field("latency", &self.latency())
            .field("seed", &self.seed.load(Relaxed))
            .finish_non_exhaustive()
    }
}

pub(crate) struct Settings {
    pub(crate) name: Arc<str>,
    pub(crate) http: bool,
    pub(crate) enabled: bool,
    pub(crate) seed: u64,
    pub(crate) rates: Rates,
    pub(crate) latency: Latency,
    pub(crate) body_after: u64,
    pub(crate) listeners: Listeners<ChaosEvent>,
}

fn load(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Relaxed))
}

impl Shared {
    pub(crate) fn new(s: Settings) -> Self {
        let shared = Self {
            name: s.name,
            http: s.http,
            armed: AtomicBool::new(false),
            enabled: AtomicBool::new(s.enabled),
            seed: AtomicU64::new(s.seed),
            calls: AtomicU64::new(0),
            error: AtomicU64::new(s.rates.error.to_bits()),
            latency_rate: AtomicU64::new(s.rates.latency.to_bits()),
            hang: AtomicU64::new(s.rates.hang.to_bits()),
            abort_body: AtomicU64::new(s.rates.abort_body.to_bits()),
            truncate_body: AtomicU64::new(s.rates.truncate_body.to_bits()),
            latency: Mutex::new(s.latency),
            body_after: AtomicU64::new(s.body_after),
            injected: Default::default(),
            settings: Mutex::new(()),
            listeners: s.listeners,
        };
        shared.rearm();
        shared
    }

    /// `true` when a call must be rolled for: one relaxed load.
    #[inline]
    pub(crate) fn armed(&self) -> bool {
        self.armed.load(Relaxed)
    }

    fn rearm(&self) {
        let armed = self.enabled.load(Relaxed) && self.rates().any();
        self.armed.store(armed, Relaxed);
    }

    pub(crate) fn rates(&self) -> Rates {
        Rates {
            error: load(&self.error),
            latency: load(&self.latency_rate),
            hang: load(&self.hang),
            abort_body: load(&self.abort_body),
            truncate_body: load(&self.truncate_body),
        }
    }

    pub(crate) fn latency(&self) -> Latency {
        *self.latency.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    pub(crate) fn seed(&self) -> u64 {
        self.seed.load(Relaxed)
    }

    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Relaxed)
    }

    pub(crate) fn body_after(&self) -> u64 {
        self.body_after.load(Relaxed)
    }

    pub(crate) fn injected(&self, kind: FaultKind) -> u64 {
        self.injected[kind.index()].load(Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded section only stores atomics: a panic in it leaves
        // nothing half-written that matters.
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Switches the layer on or off; `true` when that changed it.
    pub(crate) fn set_enabled(&self, on: bool) -> bool {
        let _g = self.lock();
        let was = self.enabled.swap(on, Relaxed);
        self.rearm();
        was != on
    }

    /// Validates `change` applied to the current rates, then stores them.
    pub(crate) fn update_rates(&self, change: impl FnOnce(&mut Rates)) -> Result<(), ConfigError> {
        let _g = self.lock();
        let mut rates = self.rates();
        change(&mut rates);
        rates.validate(self.http)?;
        self.error.store(rates.error.to_bits(), Relaxed);
        self.latency_rate.store(rates.latency.to_bits(), Relaxed);
        self.hang.store(rates.hang.to_bits(), Relaxed);
        self.abort_body.store(rates.abort_body.to_bits(), Relaxed);
        self.truncate_body
            .store(rates.truncate_body.to_bits(), Relaxed);
        self.rearm();
        Ok(())
    }

    /// The latency rate and distribution together, under the settings
    /// lock, so no setter sees one without the other.
    pub(crate) fn set_latency(&self, rate: f64, latency: Latency) -> Result<(), ConfigError> {
        latency.validate()?;
        let _g = self.lock();
        let mut rates = self.rates();
        rates.latency = rate;
        rates.validate(self.http)?;
        *self.latency.lock().unwrap_or_else(|e| e.into_inner()) = latency;
        self.latency_rate.store(rate.to_bits(), Relaxed);
        self.rearm();
        Ok(())
    }

    pub(crate) fn set_body_after(&self, bytes: u64) {
        self.body_after.store(bytes, Relaxed);
    }

    /// A new seed, and the call count back to 0: the sequence of faults
    /// starts over.
    pub(crate) fn reseed(&self, seed: u64) {
        let _g = self.lock();
        self.seed.store(seed, Relaxed);
        self.calls.store(0, Relaxed);
    }

    /// Counters (and the call count) back to 0.
    pub(crate) fn reset(&self) {
        let _g = self.lock();
        self.calls.store(0, Relaxed);
        for c in &self.injected {
            c.store(0, Relaxed);
        }
    }

    /// Rolls for one selected call of an armed layer.
    pub(crate) fn decide(&self) -> Decision {
        let n = self.calls.fetch_add(1, Relaxed);
        let mut rng = SplitMix64::for_call(self.seed.load(Relaxed), n);
        let rates = self.rates();
        // One draw picks at most one of the faults that end the call, by
        // cumulative ranges in a fixed order; a second draw decides the
        // delay. Both are always drawn, so changing one rate does not
        // shift the other's sequence.
        let pick = rng.next_53();
        let delay_draw = rng.next_53();
        let mut edge = 0;
        let mut outcome = Outcome::Pass;
        for (rate, kind) in [
            (rates.error, FaultKind::Error),
            (rates.hang, FaultKind::Hang),
            (rates.abort_body, FaultKind::AbortedBody),
            (rates.truncate_body, FaultKind::TruncatedBody),
        ] {
            edge += threshold(rate);
            if pick < edge {
                outcome = match kind {
                    FaultKind::Error => Outcome::Error,
                    FaultKind::Hang => Outcome::Hang,
                    kind => Outcome::Body(BodyFault {
                        name: self.name.clone(),
                        kind,
                        after: self.body_after(),
                    }),
                };
                break;
            }
        }
        let latency =
            (delay_draw < threshold(rates.latency)).then(|| self.latency().sample(&mut rng));
        if let Some(delay) = latency {
            self.record(FaultKind::Latency, delay);
        }
        match &outcome {
            Outcome::Pass => {}
            Outcome::Error => self.record(FaultKind::Error, Duration::ZERO),
            Outcome::Hang => self.record(FaultKind::Hang, Duration::ZERO),
            Outcome::Body(b) => self.record(b.kind, Duration::ZERO),
        }
        Decision { latency, outcome }
    }

    #[cold]
    fn record(&self, kind: FaultKind, delay: Duration) {
        self.injected[kind.index()].fetch_add(1, Relaxed);
        tracing::debug!(
            buttress.pattern = KIND,
            buttress.name = &*self.name,
            chaos.kind = kind.as_str(),
            chaos.delay_ms = delay.as_secs_f64() * 1e3,
            "fault injected"
        );
        self.listeners.emit(|| ChaosEvent::FaultInjected {
            name: self.name.clone(),
            kind,
            delay,
        });
    }
}
