//! gzip (RFC 1952) with the deflate state reused from one call to the next.
//!
//! A new deflate stream allocates and clears about 300 KB of window and hash tables; for the
//! small profiles an agent encodes every interval that was the largest part of encoding them,
//! fresh pages faulted in each time. A few compressors are kept and reset between uses instead.

use std::{io, sync::Mutex};

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Compressors kept for reuse: as many as encode at once in practice (one per sink).
const POOL_MAX: usize = 4;

static POOL: Mutex<Vec<Compress>> = Mutex::new(Vec::new());

/// The 10-byte member header: deflate, no flags, no time stamp, no extra flags, OS unknown.
const HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff];

/// `data` as one gzip member at the default level.
pub fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut deflate = POOL
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop()
        .unwrap_or_else(|| Compress::new(Compression::default(), false));
    deflate.reset();
    let result = compress(&mut deflate, data);
    let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() < POOL_MAX {
        pool.push(deflate);
    }
    result
}

fn compress(deflate: &mut Compress, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(HEADER.len() + data.len() / 4 + 64);
    out.extend_from_slice(&HEADER);
    loop {
        let consumed = usize::try_from(deflate.total_in()).unwrap_or(usize::MAX);
        let rest = data.get(consumed..).unwrap_or_default();
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(256));
        }
        match deflate.compress_vec(rest, &mut out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => break,
            Ok(Status::Ok | Status::BufError) => {}
            Err(e) => return Err(io::Error::other(e)),
        }
    }
    let mut crc = Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE: the input's length modulo 2^32.
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut d = GzDecoder::new(bytes);
        d.read_to_end(&mut out).expect("a valid gzip member");
        assert!(d.header().is_some());
        out
    }

    #[test]
    fn round_trips_through_a_standard_decoder_with_reused_state() {
        // Incompressible bytes (more output than one reservation) and repetitive ones, twice, so
        // the second round reuses compressors left by the first.
        let mut noise = Vec::with_capacity(300_000);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while noise.len() < 300_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            noise.extend_from_slice(&x.to_le_bytes());
        }
        let text = b"main;work;leaf 12\n".repeat(5_000);
        for _ in 0..2 {
            for input in [&b""[..], b"a", &text, &noise] {
                let packed = gzip(input).unwrap();
                assert_eq!(gunzip(&packed), input, "{} bytes", input.len());
            }
        }
        assert!(gzip(&text).unwrap().len() < text.len() / 20, "compresses");
        assert!(POOL.lock().unwrap().len() <= POOL_MAX);
    }

    #[test]
    fn a_corrupted_trailer_is_caught_by_the_decoder() {
        let mut packed = gzip(b"profile bytes").unwrap();
        let n = packed.len();
        packed[n - 8] ^= 0xff;
        let mut out = Vec::new();
        assert!(GzDecoder::new(&packed[..]).read_to_end(&mut out).is_err());
    }
}
