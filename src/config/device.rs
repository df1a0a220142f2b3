//! `device`: where tensors are computed.

use std::fmt;
use std::str::FromStr;

/// The device a setting names. `Auto` is the first CUDA device when there is one, else the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

/// What `device` accepts, for error messages.
pub const DEVICE_FORMS: &str = "auto, cpu, cuda or cuda:N (N a CUDA device index)";

impl DeviceChoice {
    /// The libtorch device this choice means on this machine.
    pub fn resolve(self) -> tch::Device {
        match self {
            DeviceChoice::Auto if tch::Cuda::is_available() => tch::Device::Cuda(0),
            DeviceChoice::Auto | DeviceChoice::Cpu => tch::Device::Cpu,
            DeviceChoice::Cuda(n) => tch::Device::Cuda(n),
        }
    }

    /// Refuses a CUDA device this machine does not have, saying how many it has.
    pub fn check_present(self) -> Result<(), String> {
        let DeviceChoice::Cuda(n) = self else { return Ok(()) };
        if !tch::Cuda::is_available() {
            return Err(format!("{self} is not available: libtorch sees no CUDA device here (0 devices); use cpu or auto"));
        }
        let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        if n >= count {
            let plural = if count == 1 { "" } else { "s" };
            return Err(format!("{self} does not exist: this machine has {count} CUDA device{plural} (cuda:0 to cuda:{})", count.saturating_sub(1)));
        }
        Ok(())
    }
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "auto" => return Ok(DeviceChoice::Auto),
            "cpu" => return Ok(DeviceChoice::Cpu),
            "cuda" => return Ok(DeviceChoice::Cuda(0)),
            _ => {}
        }
        t.strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceChoice::Cuda)
            .ok_or_else(|| format!("unknown device '{s}'; accepts {DEVICE_FORMS}"))
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        for bad in ["nope", "cuda:", "cuda:-1", "cuda:x", "gpu", "mps"] {
            let e = bad.parse::<DeviceChoice>().unwrap_err();
            assert!(e.contains("accepts auto, cpu, cuda or cuda:N"), "{bad}: {e}");
        }
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
    }
}
