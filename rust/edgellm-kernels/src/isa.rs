//! Instruction-set detection and the `EDGELLM_ISA` override.

use std::fmt;

/// Environment variable that forces a kernel path (`scalar`, `avx2`, `avxvnni`,
/// `avx512`, `neon`, `dotprod`, `i8mm`, or `auto`).
pub const ISA_ENV: &str = "EDGELLM_ISA";

/// Environment variable that, set to `1`, takes AVX-VNNI as present where CPUID
/// does not report it. Some hypervisors mask the bit on CPUs that have the
/// instructions (a Sapphire Rapids-class VM here runs them); on a CPU without
/// them the AVX-VNNI kernels stop the process with an illegal instruction.
pub const ASSUME_AVXVNNI_ENV: &str = "EDGELLM_X86_AVXVNNI";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust: the reference every other path is tested against.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C (Haswell / Zen 1 and later).
    Avx2,
    /// AVX2 plus AVX-VNNI (Alder Lake and later client cores, which have no
    /// AVX-512): the quantized products on the VEX `vpdpbusd`, 256-bit.
    AvxVnni,
    /// AVX2 plus AVX-512 F/BW/VL and VNNI (Ice Lake, Sapphire Rapids, Zen 4 and
    /// later): the quantized prompt GEMM multiplies bytes with `vpdpbusd`, one
    /// instruction where AVX2 needs two to four.
    Avx512,
    /// aarch64 Advanced SIMD (every aarch64 core; e.g. Cortex-A53/A72): integer
    /// dot products by widening multiplies.
    Neon,
    /// NEON with the ARMv8.2 dot-product instructions (`sdot`; Cortex-A55/A76,
    /// Apple M, Graviton 2 and later).
    Dotprod,
    /// NEON with dotprod and the ARMv8.6 int8 matrix multiply (`smmla`; Cortex-A510/
    /// A710/X2, Graviton 3, Apple M2 and later): 2 × 2 tiles of 8-byte dots in
    /// the prompt GEMM.
    I8mm,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IsaError {
    Unknown(String),
    Unsupported(Isa),
}

impl fmt::Display for IsaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IsaError::Unknown(s) => write!(
                f,
                "unknown instruction set {s:?} in {ISA_ENV}; expected one of: auto, {}",
                Isa::ALL
                    .iter()
                    .map(|i| i.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            IsaError::Unsupported(isa) => write!(
                f,
                "instruction set {} is not supported by this CPU or build (supported: {})",
                isa.name(),
                Isa::supported()
                    .iter()
                    .map(|i| i.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

impl std::error::Error for IsaError {}

impl Isa {
    /// Every path, each after the ones it improves on ([`Isa::best`] takes the
    /// last supported).
    pub const ALL: [Isa; 7] = [Isa::Scalar, Isa::Avx2, Isa::AvxVnni, Isa::Avx512, Isa::Neon, Isa::Dotprod, Isa::I8mm];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
            Isa::Dotprod => "dotprod",
            Isa::I8mm => "i8mm",
        }
    }

    pub fn parse(s: &str) -> Result<Option<Isa>, IsaError> {
        let s = s.trim().to_ascii_lowercase();
        if s.is_empty() || s == "auto" {
            return Ok(None);
        }
        Isa::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .map(Some)
            .ok_or(IsaError::Unknown(s))
    }

    /// Whether this CPU (checked at run time) and this build can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 | Isa::AvxVnni | Isa::Avx512 => {
                #[cfg(target_arch = "x86_64")]
                {
                    use std::is_x86_feature_detected as has;
                    has!("avx2")
                        && has!("fma")
                        && has!("f16c")
                        && match self {
                            Isa::AvxVnni => has_avxvnni(),
                            Isa::Avx512 => has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni"),
                            _ => true,
                        }
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    false
                }
            }
            Isa::Neon | Isa::Dotprod | Isa::I8mm => {
                #[cfg(target_arch = "aarch64")]
                {
                    use std::arch::is_aarch64_feature_detected as has;
                    has!("neon")
                        && (self == Isa::Neon || has!("dotprod"))
                        && (self != Isa::I8mm || has!("i8mm"))
                }
                #[cfg(not(target_arch = "aarch64"))]
                {
                    false
                }
            }
        }
    }

    /// Every path this machine can run, scalar first.
    pub fn supported() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
    }

    /// The fastest supported path.
    pub fn best() -> Isa {
        *Isa::supported().last().unwrap_or(&Isa::Scalar)
    }
}

/// Whether the CPU has AVX-VNNI, or [`ASSUME_AVXVNNI_ENV`] says so.
#[cfg(target_arch = "x86_64")]
fn has_avxvnni() -> bool {
    std::is_x86_feature_detected!("avxvnni") || std::env::var(ASSUME_AVXVNNI_ENV).is_ok_and(|v| v.trim() == "1")
}

/// The path forced by `EDGELLM_ISA`, if any.
pub fn requested_isa() -> Result<Option<Isa>, IsaError> {
    match std::env::var(ISA_ENV) {
        Ok(v) => Isa::parse(&v),
        Err(_) => Ok(None),
    }
}
