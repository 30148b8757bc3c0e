//! Helpers for configuration structs: durations as humantime strings.

/// `#[serde(with = "buttress_core::config::duration")]`: a `Duration` as a
/// humantime string (`"250ms"`, `"30s"`, `"1m 30s"`).
///
/// ```
/// use std::time::Duration;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Config {
///     #[serde(with = "buttress_core::config::duration")]
///     timeout: Duration,
/// }
///
/// let c: Config = serde_json::from_str(r#"{ "timeout": "1m 30s" }"#).unwrap();
/// assert_eq!(c.timeout, Duration::from_secs(90));
/// assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"timeout":"1m 30s"}"#);
/// ```
#[cfg(feature = "serde")]
pub mod duration {
    use serde::{de, Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Serializes as a humantime string.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    /// Deserializes from a humantime string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        humantime::parse_duration(&s).map_err(de::Error::custom)
    }
}

/// Like [`duration`], for `Option<Duration>` (`null` or absent is `None`;
/// pair with `#[serde(default)]`).
///
/// ```
/// use std::time::Duration;
///
/// #[derive(serde::Deserialize)]
/// struct Config {
///     #[serde(default, with = "buttress_core::config::option_duration")]
///     max_wait: Option<Duration>,
/// }
///
/// let c: Config = serde_json::from_str(r#"{ "max_wait": "20ms" }"#).unwrap();
/// assert_eq!(c.max_wait, Some(Duration::from_millis(20)));
/// let c: Config = serde_json::from_str("{}").unwrap();
/// assert_eq!(c.max_wait, None);
/// ```
#[cfg(feature = "serde")]
pub mod option_duration {
    use serde::{de, Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Serializes as a humantime string or `null`.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    /// Deserializes from a humantime string or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = Option::<std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(de::Error::custom))
            .transpose()
    }
}
