//! The system-RAM preflight (`docs/widen.md`, "The Exit"): a merge whose results cannot fit in
//! host memory is refused before any work, with numbers, instead of failing or swapping the
//! machine half-way through.

use crate::recipe::PackError;

/// What a run will hold in host memory at its peak.
#[derive(Clone, Copy, Debug)]
pub struct Estimate {
    /// The merged keys in their storage dtype.
    pub merged_bytes: u64,
    /// The largest chunk in storage dtype (keys × key bytes).
    pub worst_chunk: u64,
    /// Saving adds ~5% of the merged bytes (header, write buffers).
    pub save_model: bool,
}

impl Estimate {
    pub fn peak(&self) -> u64 {
        let save = if self.save_model { self.merged_bytes / 20 } else { 0 };
        self.merged_bytes + self.worst_chunk + save
    }

    /// Errors when `available` bytes (MemAvailable) are less than the peak. Unknown availability
    /// is taken as 4 GiB, as the reference does.
    pub fn check(&self, available: Option<usize>) -> Result<(), PackError> {
        let available = match available {
            Some(a) => a as u64,
            None => {
                tracing::warn!("cannot read MemAvailable from /proc/meminfo; assuming 4 GiB for the RAM preflight");
                4 << 30
            }
        };
        let peak = self.peak();
        if available < peak {
            return Err(PackError::runtime(format!(
                "Insufficient system RAM for merge: {} MB available, estimated {} MB needed. \
                 Close other applications or reduce model count.",
                available >> 20,
                peak >> 20
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_with_both_numbers_and_passes_when_it_fits() {
        let e = Estimate { merged_bytes: 2000 << 20, worst_chunk: 500 << 20, save_model: true };
        assert_eq!(e.peak(), (2000 << 20) + (500 << 20) + (100 << 20));
        let err = e.check(Some(1024 << 20)).unwrap_err();
        assert_eq!(err.exception_type(), "RuntimeError");
        assert_eq!(
            err.message(),
            "Insufficient system RAM for merge: 1024 MB available, estimated 2600 MB needed. \
             Close other applications or reduce model count."
        );
        assert!(e.check(Some(2600 << 20)).is_ok());
        let no_save = Estimate { save_model: false, ..e };
        assert!(no_save.check(Some(2500 << 20)).is_ok());
        // Unknown availability counts as 4 GiB.
        assert!(no_save.check(None).is_ok());
        assert!(Estimate { merged_bytes: 5 << 30, worst_chunk: 0, save_model: false }.check(None).is_err());
    }
}
