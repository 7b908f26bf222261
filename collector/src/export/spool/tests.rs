use super::*;
use crate::test_util::TempDir;

fn body(n: usize, fill: u8) -> Vec<u8> {
    vec![fill; n]
}

#[test]
fn records_come_back_in_order_and_survive_a_reopen() {
    let dir = TempDir::new("spool-order");
    let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(recovered, Recovered::default());
    for i in 0..5u8 {
        assert_eq!(
            spool.push(u64::from(i) + 1, &body(100, i)).unwrap(),
            Evicted::default()
        );
    }
    assert_eq!((spool.records(), spool.items()), (5, 15));
    assert_eq!(spool.bytes(), 5 * (HEADER_BYTES + 100));
    let first = spool.front().unwrap();
    assert_eq!((first.items, first.body.unwrap()), (1, body(100, 0)));
    assert!(spool.remove(first.seq));
    drop(spool);

    // A record half written when the agent was killed is not a record.
    std::fs::write(dir.path().join("00000000000000ff.tmp"), b"LSPL partial").unwrap();
    let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(
        recovered,
        Recovered {
            records: 4,
            items: 14,
            corrupt: 0
        }
    );
    assert!(!dir.path().join("00000000000000ff.tmp").exists());
    for i in 1..5u8 {
        let f = spool.front().unwrap();
        assert_eq!(f.body.unwrap(), body(100, i));
        assert!(spool.remove(f.seq));
    }
    assert!(spool.is_empty() && spool.front().is_none());
    // Sequence numbers go on after a reopen: new records sort after old ones.
    spool.push(1, b"later").unwrap();
    drop(spool);
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(spool.front().unwrap().body.unwrap(), b"later");
}

#[test]
fn beyond_the_cap_the_oldest_go_and_are_counted_exactly() {
    let dir = TempDir::new("spool-cap");
    let record = HEADER_BYTES + 68;
    let (mut spool, _) = Spool::open(dir.path(), 3 * record).unwrap();
    let mut evicted = Evicted::default();
    for i in 0..10u8 {
        let e = spool.push(u64::from(i) + 1, &body(68, i)).unwrap();
        evicted.records += e.records;
        evicted.items += e.items;
    }
    // Kept: the last three (items 8, 9, 10); dropped: 1 + … + 7.
    assert_eq!(
        evicted,
        Evicted {
            records: 7,
            items: 28
        }
    );
    assert_eq!((spool.records(), spool.items()), (3, 27));
    assert!(spool.bytes() <= 3 * record);
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, 3, "evicted records leave the disk");
    assert_eq!(spool.front().unwrap().body.unwrap(), body(68, 7));
}

#[test]
fn the_record_being_sent_is_not_evicted() {
    let dir = TempDir::new("spool-sending");
    let record = HEADER_BYTES + 10;
    let (mut spool, _) = Spool::open(dir.path(), 2 * record).unwrap();
    spool.push(1, &body(10, 1)).unwrap();
    spool.push(2, &body(10, 2)).unwrap();
    let sending = spool.front().unwrap();
    // Full: the next push evicts the second record, not the one in flight.
    let e = spool.push(3, &body(10, 3)).unwrap();
    assert_eq!(
        e,
        Evicted {
            records: 1,
            items: 2
        }
    );
    assert!(spool.remove(sending.seq));
    assert_eq!(spool.front().unwrap().body.unwrap(), body(10, 3));
    // A record larger than the cap is refused, not half kept.
    assert!(matches!(
        spool.push(1, &body(100, 0)),
        Err(SpoolError::TooLarge { .. })
    ));
}

#[test]
fn damaged_records_are_found_and_removed() {
    let dir = TempDir::new("spool-damaged");
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    spool.push(4, &body(50, 1)).unwrap();
    spool.push(6, &body(50, 2)).unwrap();
    spool.push(8, &body(50, 3)).unwrap();
    drop(spool);
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    // The first: a flipped body byte (checksum); the second: truncated (size).
    let mut bytes = std::fs::read(&names[0]).unwrap();
    bytes[40] ^= 0xff;
    std::fs::write(&names[0], bytes).unwrap();
    let bytes = std::fs::read(&names[1]).unwrap();
    std::fs::write(&names[1], &bytes[..bytes.len() - 1]).unwrap();

    let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(
        recovered,
        Recovered {
            records: 2,
            items: 12,
            corrupt: 1
        }
    );
    let damaged = spool.front().unwrap();
    assert_eq!(damaged.items, 4);
    assert!(damaged.body.is_err());
    assert!(spool.remove(damaged.seq));
    assert_eq!(spool.front().unwrap().body.unwrap(), body(50, 3));
}

#[test]
fn a_full_disk_is_an_error_and_leaves_nothing_behind() {
    // A 64 KiB tmpfs: the second 40 KiB record finds no space (ENOSPC), as on a full node disk.
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let dir = TempDir::new("spool-full");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(dir.path())
        .status()
        .expect("mount");
    assert!(mounted.success());
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    spool.push(1, &body(40 << 10, 1)).unwrap();
    let err = spool.push(2, &body(40 << 10, 2)).unwrap_err();
    let umount = || {
        std::process::Command::new("umount")
            .arg(dir.path())
            .status()
            .expect("umount")
    };
    match &err {
        SpoolError::Io { source, .. } if source.raw_os_error() == Some(28) => {}
        other => {
            umount();
            panic!("want ENOSPC, got {other}");
        }
    }
    assert_eq!((spool.records(), spool.items()), (1, 1));
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    umount();
    assert_eq!(
        files.len(),
        1,
        "the failed record's temporary file is removed: {files:?}"
    );
}

/// Whether this process's effective user is root (/proc/self/status, `Uid:` real effective …).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
