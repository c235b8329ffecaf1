//! SHA-256 of sixteen short messages at once, one per 32-bit lane of AVX-512 registers.
//!
//! Row digests are many independent messages of one or two blocks, and SHA-NI (what `sha2`
//! uses) runs one message at a time at about 2 cycles a byte here. The same compression
//! function computed in sixteen lanes of 512-bit registers, with three-input logic
//! (`vpternlogd`) for Ch, Maj and the sigma sums and native rotates (`vprord`), costs about
//! 110 vector instructions per block for the sixteen, which is about 1.8 times the throughput
//! of SHA-NI on this machine (256 two-block messages in cache; docs/pipeline.md, "Cost").
//!
//! The digests are the standard SHA-256 (tests compare them with `sha2` on messages of every
//! block count). CPUs without AVX-512 use `sha2`.
//!
//! The only `unsafe` in strata is the call into the AVX-512 function, made only after the CPU
//! was seen to have the features it is compiled for. Everything inside is safe code: slices are
//! indexed with bounds checks and registers are filled and read with value intrinsics.

/// Messages hashed at once.
pub const LANES: usize = 16;

/// The SHA-256 initial state.
pub const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// Whether this CPU runs the sixteen-lane function.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The final SHA-256 states of up to sixteen padded messages: lane `l` has `counts[l]` blocks
/// starting at `blocks[starts[l]]` (a lane with no blocks is unused and keeps the initial
/// state). Falls back to `sha2` where the CPU lacks AVX-512.
pub fn states(
    blocks: &[[u8; 64]],
    starts: &[usize; LANES],
    counts: &[usize; LANES],
) -> [[u32; 8]; LANES] {
    #[cfg(target_arch = "x86_64")]
    if let Some(states) = x86::states_avx512(blocks, starts, counts) {
        return states;
    }
    states_scalar(blocks, starts, counts)
}

/// [`states`] with `sha2`, one message at a time.
pub fn states_scalar(
    blocks: &[[u8; 64]],
    starts: &[usize; LANES],
    counts: &[usize; LANES],
) -> [[u32; 8]; LANES] {
    std::array::from_fn(|l| {
        let mut state = IV;
        sha2::block_api::compress256(&mut state, &blocks[starts[l]..starts[l] + counts[l]]);
        state
    })
}

#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use super::{IV, LANES};
    use std::arch::x86_64::*;

    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];

    /// The sixteen-lane states, or `None` on a CPU without AVX-512 F and BW.
    pub fn states_avx512(
        blocks: &[[u8; 64]],
        starts: &[usize; LANES],
        counts: &[usize; LANES],
    ) -> Option<[[u32; 8]; LANES]> {
        if !super::available() {
            return None;
        }
        // SAFETY: the function's only requirement is that the CPU has the target features it
        // is compiled with, avx512f and avx512bw, and the line above checked that it does.
        #[allow(unsafe_code)]
        let states = unsafe { compress16(blocks, starts, counts) };
        Some(states)
    }

    /// XOR of three (one `vpternlogd`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn xor3(a: __m512i, b: __m512i, c: __m512i) -> __m512i {
        _mm512_ternarylogic_epi32::<0x96>(a, b, c)
    }

    /// Σ1(e) = e ⋙ 6 ⊕ e ⋙ 11 ⊕ e ⋙ 25.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn big_sigma1(e: __m512i) -> __m512i {
        xor3(_mm512_ror_epi32::<6>(e), _mm512_ror_epi32::<11>(e), _mm512_ror_epi32::<25>(e))
    }

    /// Σ0(a) = a ⋙ 2 ⊕ a ⋙ 13 ⊕ a ⋙ 22.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn big_sigma0(a: __m512i) -> __m512i {
        xor3(_mm512_ror_epi32::<2>(a), _mm512_ror_epi32::<13>(a), _mm512_ror_epi32::<22>(a))
    }

    /// σ0(x) = x ⋙ 7 ⊕ x ⋙ 18 ⊕ x ≫ 3.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn small_sigma0(x: __m512i) -> __m512i {
        xor3(_mm512_ror_epi32::<7>(x), _mm512_ror_epi32::<18>(x), _mm512_srli_epi32::<3>(x))
    }

    /// σ1(x) = x ⋙ 17 ⊕ x ⋙ 19 ⊕ x ≫ 10.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn small_sigma1(x: __m512i) -> __m512i {
        xor3(_mm512_ror_epi32::<17>(x), _mm512_ror_epi32::<19>(x), _mm512_srli_epi32::<10>(x))
    }

    /// A block as sixteen little-endian words (one 64-byte load once compiled).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load(b: &[u8; 64]) -> __m512i {
        let w = |i: usize| i32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        _mm512_set_epi32(
            w(15),
            w(14),
            w(13),
            w(12),
            w(11),
            w(10),
            w(9),
            w(8),
            w(7),
            w(6),
            w(5),
            w(4),
            w(3),
            w(2),
            w(1),
            w(0),
        )
    }

    /// Rows of sixteen words to columns: `out[t]` holds word `t` of every row, row `l` in lane
    /// `l`. Words within 128-bit quarters, then quarters.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose(r: &[__m512i; 16]) -> [__m512i; 16] {
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        // u[j][c], quarter k: word 4k + c of rows 4j..4j + 4.
        let mut u = [[_mm512_setzero_si512(); 4]; 4];
        for j in 0..4 {
            u[j][0] = _mm512_unpacklo_epi64(t[4 * j], t[4 * j + 2]);
            u[j][1] = _mm512_unpackhi_epi64(t[4 * j], t[4 * j + 2]);
            u[j][2] = _mm512_unpacklo_epi64(t[4 * j + 1], t[4 * j + 3]);
            u[j][3] = _mm512_unpackhi_epi64(t[4 * j + 1], t[4 * j + 3]);
        }
        let mut out = [_mm512_setzero_si512(); 16];
        for c in 0..4 {
            let v0 = _mm512_shuffle_i32x4::<0x88>(u[0][c], u[1][c]);
            let v1 = _mm512_shuffle_i32x4::<0xDD>(u[0][c], u[1][c]);
            let v2 = _mm512_shuffle_i32x4::<0x88>(u[2][c], u[3][c]);
            let v3 = _mm512_shuffle_i32x4::<0xDD>(u[2][c], u[3][c]);
            out[c] = _mm512_shuffle_i32x4::<0x88>(v0, v2);
            out[4 + c] = _mm512_shuffle_i32x4::<0x88>(v1, v3);
            out[8 + c] = _mm512_shuffle_i32x4::<0xDD>(v0, v2);
            out[12 + c] = _mm512_shuffle_i32x4::<0xDD>(v1, v3);
        }
        out
    }

    /// Lane `l` of `v`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn lane(v: __m512i, l: usize) -> u32 {
        let quarter = match l / 4 {
            0 => _mm512_extracti32x4_epi32::<0>(v),
            1 => _mm512_extracti32x4_epi32::<1>(v),
            2 => _mm512_extracti32x4_epi32::<2>(v),
            _ => _mm512_extracti32x4_epi32::<3>(v),
        };
        (match l % 4 {
            0 => _mm_extract_epi32::<0>(quarter),
            1 => _mm_extract_epi32::<1>(quarter),
            2 => _mm_extract_epi32::<2>(quarter),
            _ => _mm_extract_epi32::<3>(quarter),
        }) as u32
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    fn compress16(
        blocks: &[[u8; 64]],
        starts: &[usize; LANES],
        counts: &[usize; LANES],
    ) -> [[u32; 8]; LANES] {
        // Big-endian words: reverse the bytes of each 32-bit word.
        let bswap = _mm512_set4_epi32(0x0c0d0e0f, 0x08090a0b, 0x04050607, 0x00010203);
        let mut state: [__m512i; 8] = [_mm512_setzero_si512(); 8];
        for (s, iv) in state.iter_mut().zip(IV) {
            *s = _mm512_set1_epi32(iv as i32);
        }
        let most = counts.iter().copied().max().unwrap_or(0);
        for j in 0..most {
            // Lanes whose message has a block `j`; the others hash some block of theirs (or
            // the first) and keep their state.
            let mut active: u16 = 0;
            let mut rows = [_mm512_setzero_si512(); 16];
            for l in 0..LANES {
                if counts[l] > j {
                    active |= 1 << l;
                }
                let at = if counts[l] > j { starts[l] + j } else { 0 };
                rows[l] = _mm512_shuffle_epi8(load(&blocks[at]), bswap);
            }
            let mut w = transpose(&rows);
            let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = state;
            // Round `16 r + i`, with the registers named in rotation (no moves between rounds)
            // and the message schedule in a ring of sixteen words.
            macro_rules! round {
                ($a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident, $g:ident, $h:ident,
                 $r:expr, $i:expr) => {{
                    if $r > 0 {
                        w[$i] = _mm512_add_epi32(
                            _mm512_add_epi32(small_sigma1(w[($i + 14) % 16]), w[($i + 9) % 16]),
                            _mm512_add_epi32(small_sigma0(w[($i + 1) % 16]), w[$i]),
                        );
                    }
                    let kw = _mm512_add_epi32(w[$i], _mm512_set1_epi32(K[$r * 16 + $i] as i32));
                    // Ch(e, f, g) = e ? f : g; Maj(a, b, c) = majority.
                    let t1 = _mm512_add_epi32(
                        _mm512_add_epi32($h, big_sigma1($e)),
                        _mm512_add_epi32(_mm512_ternarylogic_epi32::<0xCA>($e, $f, $g), kw),
                    );
                    let t2 = _mm512_add_epi32(
                        big_sigma0($a),
                        _mm512_ternarylogic_epi32::<0xE8>($a, $b, $c),
                    );
                    $d = _mm512_add_epi32($d, t1);
                    $h = _mm512_add_epi32(t1, t2);
                }};
            }
            macro_rules! eight {
                ($r:expr, $o:expr) => {{
                    round!(a, b, c, d, e, f, g, h, $r, $o);
                    round!(h, a, b, c, d, e, f, g, $r, $o + 1);
                    round!(g, h, a, b, c, d, e, f, $r, $o + 2);
                    round!(f, g, h, a, b, c, d, e, $r, $o + 3);
                    round!(e, f, g, h, a, b, c, d, $r, $o + 4);
                    round!(d, e, f, g, h, a, b, c, $r, $o + 5);
                    round!(c, d, e, f, g, h, a, b, $r, $o + 6);
                    round!(b, c, d, e, f, g, h, a, $r, $o + 7);
                }};
            }
            eight!(0, 0);
            eight!(0, 8);
            eight!(1, 0);
            eight!(1, 8);
            eight!(2, 0);
            eight!(2, 8);
            eight!(3, 0);
            eight!(3, 8);
            let next = [a, b, c, d, e, f, g, h];
            for (s, n) in state.iter_mut().zip(next) {
                *s = _mm512_mask_add_epi32(*s, active, *s, n);
            }
        }
        let mut out = [[0u32; 8]; LANES];
        for (l, o) in out.iter_mut().enumerate() {
            for (word, s) in o.iter_mut().zip(state) {
                *word = lane(s, l);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages of 0 to 5 blocks in random places, every lane count.
    #[test]
    fn sixteen_lanes_agree_with_sha2() {
        let mut next = crate::xorshift(0x9e37_79b9_7f4a_7c15);
        let blocks: Vec<[u8; 64]> =
            (0..400).map(|_| std::array::from_fn(|_| next() as u8)).collect();
        for round in 0..300 {
            let counts: [usize; LANES] =
                std::array::from_fn(|l| if l <= round % LANES { (next() % 6) as usize } else { 0 });
            let starts: [usize; LANES] =
                std::array::from_fn(|l| (next() as usize) % (blocks.len() - counts[l]));
            let want = states_scalar(&blocks, &starts, &counts);
            assert_eq!(states(&blocks, &starts, &counts), want, "round {round}");
            #[cfg(target_arch = "x86_64")]
            if let Some(states) = x86::states_avx512(&blocks, &starts, &counts) {
                assert_eq!(states, want, "round {round}");
            }
        }
        if !available() {
            eprintln!("this CPU lacks AVX-512 F and BW: only the sha2 path was tested");
        }
    }
}
