//! A device named in `config.toml` or on the command line (`"cpu"`, `"cuda"`, `"cuda:N"`) and
//! whether libtorch has it on this machine.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// A device named in `config.toml`: `"cpu"`, `"cuda"` or `"cuda:N"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The host CPU.
    #[default]
    Cpu,
    /// CUDA device `N` (0-based, as `torch.device("cuda:N")`).
    Cuda(usize),
}

/// Why a configured device cannot be used here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceUnavailable {
    /// libtorch sees no CUDA device at all.
    #[error("device {0} requested but CUDA is not available on this machine (libtorch sees no CUDA device); use device = \"cpu\"")]
    NoCuda(DeviceSpec),
    /// libtorch sees CUDA devices, but not this one.
    #[error("device {device} requested but libtorch sees only {count} CUDA device(s) (cuda:0..cuda:{last})", last = .count - 1)]
    NotPresent {
        /// The device asked for.
        device: DeviceSpec,
        /// The CUDA devices libtorch sees (at least 1).
        count: usize,
    },
}

impl DeviceSpec {
    /// The libtorch device, when it exists on this machine; else why not, naming the device and
    /// the number of CUDA devices libtorch sees.
    pub fn resolve(self) -> Result<tch::Device, DeviceUnavailable> {
        match self {
            DeviceSpec::Cpu => Ok(tch::Device::Cpu),
            DeviceSpec::Cuda(index) => {
                let count = if tch::Cuda::is_available() {
                    usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
                } else {
                    0
                };
                if index < count {
                    Ok(tch::Device::Cuda(index))
                } else if count == 0 {
                    Err(DeviceUnavailable::NoCuda(self))
                } else {
                    Err(DeviceUnavailable::NotPresent {
                        device: self,
                        count,
                    })
                }
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ConfigError::InvalidDevice(s.to_string());
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => {
                let index = s.strip_prefix("cuda:").ok_or_else(invalid)?;
                if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid());
                }
                index.parse().map(DeviceSpec::Cuda).map_err(|_| invalid())
            }
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = ConfigError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}
