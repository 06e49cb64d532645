//! memcpy for the static musl build (x86_64). musl's own copies every unaligned head and tail
//! byte with a single `movsb` and starts `rep movsq` even for a few bytes: in the agent, whose
//! hot path moves events and copies short strings into JSON, it was 56 % of the CPU during an
//! exec storm (`perf`, docs/bench.md). build.rs links every call to `memcpy` in the binary (Rust,
//! musl, libbpf) to [`__wrap_memcpy`] with `-Wl,--wrap=memcpy`, for optimized static musl x86_64
//! builds only; other builds never call it. musl's `memmove` still reaches musl's own forward
//! copy through an internal alias that the linker does not wrap; it is not on the hot path
//! (`perf` shows no time in it).
//!
//! The body must not contain anything the compiler could turn back into a `memcpy` call (a copy
//! loop, a large struct copy): that call would come back here. Hence straight-line fixed-size
//! loads and stores for short copies and one `rep movsb` for the rest (fast on every x86_64 CPU
//! with ERMSB, Intel since 2012 and AMD since Zen 3; correct everywhere). build.rs does not wrap
//! unoptimized builds, where fixed-size copies may themselves become calls.

#![cfg(target_arch = "x86_64")]

use std::arch::asm;

/// `memcpy(dst, src, n)`.
///
/// # Safety
/// The C contract: `src` readable and `dst` writable for `n` bytes, the two not overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __wrap_memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: every load below reads within [src, src + n) and every store writes within
    // [dst, dst + n): the pairs of fixed-size accesses start at 0 and end at n, each covering
    // at most n bytes, for the n of its branch. Unaligned accesses are what read_unaligned and
    // write_unaligned are for.
    unsafe {
        if n <= 16 {
            if n >= 8 {
                let a = src.cast::<u64>().read_unaligned();
                let b = src.add(n - 8).cast::<u64>().read_unaligned();
                dst.cast::<u64>().write_unaligned(a);
                dst.add(n - 8).cast::<u64>().write_unaligned(b);
            } else if n >= 4 {
                let a = src.cast::<u32>().read_unaligned();
                let b = src.add(n - 4).cast::<u32>().read_unaligned();
                dst.cast::<u32>().write_unaligned(a);
                dst.add(n - 4).cast::<u32>().write_unaligned(b);
            } else if n >= 2 {
                let a = src.cast::<u16>().read_unaligned();
                let b = src.add(n - 2).cast::<u16>().read_unaligned();
                dst.cast::<u16>().write_unaligned(a);
                dst.add(n - 2).cast::<u16>().write_unaligned(b);
            } else if n == 1 {
                *dst = *src;
            }
        } else if n <= 32 {
            let a = src.cast::<u128>().read_unaligned();
            let b = src.add(n - 16).cast::<u128>().read_unaligned();
            dst.cast::<u128>().write_unaligned(a);
            dst.add(n - 16).cast::<u128>().write_unaligned(b);
        } else if n <= 64 {
            let a = src.cast::<u128>().read_unaligned();
            let b = src.add(16).cast::<u128>().read_unaligned();
            let c = src.add(n - 32).cast::<u128>().read_unaligned();
            let d = src.add(n - 16).cast::<u128>().read_unaligned();
            dst.cast::<u128>().write_unaligned(a);
            dst.add(16).cast::<u128>().write_unaligned(b);
            dst.add(n - 32).cast::<u128>().write_unaligned(c);
            dst.add(n - 16).cast::<u128>().write_unaligned(d);
        } else {
            // The System V ABI guarantees the direction flag is clear at a call: forward copy.
            asm!(
                "rep movsb",
                inout("rcx") n => _,
                inout("rdi") dst => _,
                inout("rsi") src => _,
                options(nostack, preserves_flags)
            );
        }
    }
    dst
}

#[cfg(test)]
mod tests {
    use super::__wrap_memcpy;

    /// Every length up to 300 (each branch and its edges), at every source and destination
    /// alignment within 16 bytes: the copy is exact and touches nothing outside [dst, dst + n).
    #[test]
    fn copies_exactly_n_bytes_at_every_size_and_alignment() {
        const GUARD: u8 = 0xA5;
        let src: Vec<u8> = (0..400u32).map(|i| (i * 7 + 3) as u8).collect();
        for n in 0..=300usize {
            for so in 0..16 {
                for d_off in 0..16 {
                    let mut dst = vec![GUARD; 400];
                    // SAFETY: both ranges lie within their 400-byte buffers (16 + 300 < 400),
                    // which are distinct allocations.
                    let ret = unsafe {
                        __wrap_memcpy(dst.as_mut_ptr().add(d_off), src.as_ptr().add(so), n)
                    };
                    assert_eq!(ret, dst.as_mut_ptr().wrapping_add(d_off), "returns dst");
                    assert_eq!(
                        &dst[d_off..d_off + n],
                        &src[so..so + n],
                        "n={n} so={so} do={d_off}"
                    );
                    assert!(
                        dst[..d_off].iter().all(|&b| b == GUARD),
                        "wrote before dst, n={n}"
                    );
                    assert!(
                        dst[d_off + n..].iter().all(|&b| b == GUARD),
                        "wrote past dst, n={n}"
                    );
                }
            }
        }
    }

    /// Large copies (the `rep movsb` branch well past a page) too.
    #[test]
    fn copies_large_buffers() {
        let src: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let mut dst = vec![0u8; 70_001];
        // SAFETY: 70,000 bytes from a 70,000-byte buffer into a 70,001-byte one at offset 1.
        unsafe { __wrap_memcpy(dst.as_mut_ptr().add(1), src.as_ptr(), src.len()) };
        assert_eq!(&dst[1..], &src[..]);
        assert_eq!(dst[0], 0);
    }
}
