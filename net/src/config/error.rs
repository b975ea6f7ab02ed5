//! Errors of the device-specification grammar: each names the device, the option and the value.

/// A mistake in a device specification, reported at parse time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("`{spec}`: expected `vecN:transport=NAME,key=value,...` or `ethN=TRANSPORT,...`")]
    Form { spec: String },
    #[error("{dev}: unknown transport `{name}` (expected one of {expected})")]
    UnknownTransport {
        dev: String,
        name: String,
        expected: &'static str,
    },
    #[error("{dev}: missing `transport=NAME`")]
    MissingTransport { dev: String },
    #[error("{dev}: `{item}` is not `key=value`")]
    NotKeyValue { dev: String, item: String },
    #[error("{dev}: unknown option `{key}={value}`")]
    UnknownKey {
        dev: String,
        key: String,
        value: String,
    },
    #[error("{dev}: option `{key}={value}` belongs to transport(s) {belongs}, not {transport}")]
    WrongTransport {
        dev: String,
        key: String,
        value: String,
        transport: &'static str,
        belongs: String,
    },
    #[error("{dev}: option `{key}` given twice")]
    Duplicate { dev: String, key: String },
    #[error("{dev}: option `{key}={value}`: {reason}")]
    BadValue {
        dev: String,
        key: String,
        value: String,
        reason: String,
    },
    #[error("{dev}: transport {transport} requires `{key}`")]
    Missing {
        dev: String,
        transport: &'static str,
        key: &'static str,
    },
    #[error("{dev}: `{given}` given without `{missing}` (both or neither)")]
    Unpaired {
        dev: String,
        given: &'static str,
        missing: &'static str,
    },
    #[error("{dev}: too many fields for {transport} (at most {max}: {usage})")]
    TooManyFields {
        dev: String,
        transport: &'static str,
        max: usize,
        usage: &'static str,
    },
}
