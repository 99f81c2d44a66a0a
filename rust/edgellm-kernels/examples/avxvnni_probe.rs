//! Runs one AVX-VNNI instruction, whatever CPUID says, and exits 0 if the CPU
//! executed it (a CPU without it stops the process with SIGILL). CI runs this
//! where the hypervisor may mask the CPUID bit, and sets
//! `EDGELLM_X86_AVXVNNI=1` for the tests when it succeeds, so the AVX-VNNI
//! kernel table is tested on hardware that has the instructions.

#[cfg(target_arch = "x86_64")]
fn main() {
    use std::arch::x86_64::*;
    if !std::is_x86_feature_detected!("avx2") {
        std::process::exit(1);
    }
    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn dot(u: u8, s: i8) -> i32 {
        let acc = _mm256_dpbusd_avx_epi32(_mm256_set1_epi32(10), _mm256_set1_epi8(u as i8), _mm256_set1_epi8(s));
        _mm256_extract_epi32::<3>(acc)
    }
    // SAFETY: AVX2 is present; AVX-VNNI is what this probes (SIGILL if absent).
    let got = unsafe { dot(std::hint::black_box(3), std::hint::black_box(-2)) };
    // 10 + 4 · (3 · −2): the unsigned × signed products, added to the lane.
    std::process::exit(if got == -14 { 0 } else { 2 });
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    std::process::exit(1);
}
