//! The reader's own logic without a kernel: record decoding, batches within the queue's byte
//! bound, and what is dropped (counted) when the queue is full or memory is short.

use super::*;

#[test]
fn decode_bounds_the_data_by_the_record() {
    let header = SocketEventHeader {
        kind: kind::DATA,
        bytes: 5000,
        captured: 4,
        ..Default::default()
    };
    let hl = std::mem::size_of::<SocketEventHeader>();
    let mut record = vec![0u8; hl + 8];
    // SAFETY: the record has room for the header at its start.
    unsafe { std::ptr::write_unaligned(record.as_mut_ptr().cast(), header) };
    record[hl..hl + 4].copy_from_slice(b"GET ");
    let (h, data) = decode(&record).unwrap();
    assert_eq!((h.bytes, data), (5000, &b"GET "[..]));

    // A header claiming more bytes than the record holds gives none, and a short record nothing.
    let mut lying = record.clone();
    lying[56..60].copy_from_slice(&1000u32.to_le_bytes());
    assert!(decode(&lying).unwrap().1.is_empty());
    assert!(decode(&record[..50]).is_none());
    // An OPEN/CLOSE record is the header alone.
    assert!(decode(&record[..hl]).unwrap().1.is_empty());
}

/// Events leave in batches whose bytes are slices of one buffer; the queue is bound by the
/// batches' bytes, which they give back when the span builder drops them.
#[test]
fn tally_batches_events_within_the_queues_byte_bound() {
    let (tx, rx) = sync_channel(16);
    // Room for one batch of events and a few bytes, not two.
    let mut tally = Tally {
        queue_bytes: EMPTY_BATCH_BYTES + 1024,
        ..Tally::default()
    };
    let data = |i: usize| vec![i as u8; i % 7];
    for i in 0..BATCH_EVENTS + 3 {
        if !tally.has_room() {
            assert!(tally.send(&tx), "an empty queue takes any batch");
        }
        let header = SocketEventHeader {
            kind: kind::DATA,
            fd: i as i32,
            captured: (i % 7) as u32,
            ..Default::default()
        };
        tally.push(header, &data(i));
    }
    let first = rx.try_recv().unwrap();
    assert_eq!(first.len(), BATCH_EVENTS);
    for (i, e) in first.iter().enumerate() {
        assert_eq!((e.header.fd, &e.data[..]), (i as i32, &data(i)[..]));
    }
    // The first batch holds its bytes until it is dropped: the rest stays with the reader.
    let held = tally.queued.load(Ordering::Relaxed);
    assert!(held >= EMPTY_BATCH_BYTES, "{held}");
    assert!(!tally.send(&tx));
    assert!(rx.try_recv().is_err());
    assert_eq!(tally.events.len(), 3);
    drop(first);
    assert_eq!(tally.queued.load(Ordering::Relaxed), 0);
    assert!(tally.send(&tx));
    let rest = rx.try_recv().unwrap();
    assert_eq!(
        rest.iter().map(|e| e.header.fd).collect::<Vec<_>>(),
        [256, 257, 258]
    );
    assert_eq!(&rest[2].data[..], &data(258)[..]);
    // Events taken out of a batch leave the bound with it.
    let events: Vec<SocketEvent> = rest.into_iter().collect();
    assert_eq!(events.len(), 3);
    assert_eq!(tally.queued.load(Ordering::Relaxed), 0);
    assert_eq!(tally.queue_full, 0);
    assert_eq!(tally.data, BATCH_EVENTS as u64 + 3);
}

/// Events that are not in the ring any more (the sweep's CLOSEs) are dropped with their batch
/// when the queue is full, counted; a gone span builder drops everything, counted.
#[test]
fn tally_drops_what_cannot_wait_and_counts_it() {
    let (tx, rx) = sync_channel(16);
    let mut tally = Tally {
        queue_bytes: 1,
        ..Tally::default()
    };
    let close = |fd| SocketEventHeader {
        kind: kind::CLOSE,
        fd,
        ..Default::default()
    };
    for fd in 0..2 * BATCH_EVENTS as i32 + 1 {
        tally.push_or_drop(&tx, close(fd), &[]);
    }
    // The first full batch went into the empty queue, the second found it full.
    let first = rx.try_recv().unwrap();
    assert_eq!(first.len(), BATCH_EVENTS);
    assert_eq!(tally.queue_full, BATCH_EVENTS as u64);
    assert_eq!(tally.events.len(), 1);
    assert_eq!(tally.events[0].header.fd, 2 * BATCH_EVENTS as i32);
    assert_eq!(tally.close, 2 * BATCH_EVENTS as u64 + 1);
    drop(first);
    drop(rx);
    assert!(tally.send(&tx));
    assert_eq!(tally.queue_full, BATCH_EVENTS as u64 + 1);
    assert_eq!(tally.queued.load(Ordering::Relaxed), 0);
}

/// Under memory pressure the reader drops DATA and LOG events, counted, and still passes OPEN
/// and CLOSE; once the pressure is off, everything passes again.
#[test]
fn memory_pressure_drops_payloads_and_keeps_connection_events() {
    let (tx, rx) = sync_channel(4);
    let pressure = crate::memory::Pressure::default();
    let mut tally = Tally {
        pressure: pressure.clone(),
        ..Tally::default()
    };
    let event = |kind, fd| SocketEventHeader {
        kind,
        fd,
        captured: 3,
        ..Default::default()
    };
    assert!(pressure.update(96, 100));
    for (k, fd) in [
        (kind::OPEN, 1),
        (kind::DATA, 2),
        (kind::LOG, 3),
        (kind::CLOSE, 4),
    ] {
        tally.push(event(k, fd), b"abc");
    }
    assert!(tally.send(&tx));
    let passed: Vec<i32> = rx.try_recv().unwrap().iter().map(|e| e.header.fd).collect();
    assert_eq!(passed, [1, 4]);
    assert_eq!(tally.memory_pressure, 2);
    // Every event read is still counted by kind.
    assert_eq!(
        (tally.open, tally.data, tally.log, tally.close),
        (1, 1, 1, 1)
    );

    assert!(!pressure.update(50, 100));
    tally.push(event(kind::DATA, 5), b"abc");
    assert!(tally.send(&tx));
    let after = rx.try_recv().unwrap();
    assert_eq!((after[0].header.fd, &after[0].data[..]), (5, &b"abc"[..]));
    assert_eq!(tally.memory_pressure, 2);
}
