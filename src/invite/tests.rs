//! The invite store: uses counted, expiry by an injected clock, only hashes kept, forged and
//! revoked secrets refused, and the file round trip.

use super::*;

const NOW: u64 = 1_800_000_000;

#[test]
fn a_single_use_invite_admits_once_then_refuses() {
    let mut store = InviteStore::default();
    let (record, secret) = store.create(NOW, 3600, 1, None).unwrap();
    let used = store.redeem(&secret, NOW + 10).unwrap();
    assert_eq!((used.id.as_str(), used.used), (record.id.as_str(), 1));
    assert_eq!(store.redeem(&secret, NOW + 11), Err(JoinRefusal::UsedUp));
    assert_eq!(store.list()[0].status(NOW + 11), "used");
}

#[test]
fn an_invite_with_three_uses_admits_three_times() {
    let mut store = InviteStore::default();
    let (_, secret) = store.create(NOW, 3600, 3, Some("rack".into())).unwrap();
    for _ in 0..3 {
        store.redeem(&secret, NOW).unwrap();
    }
    assert_eq!(store.redeem(&secret, NOW), Err(JoinRefusal::UsedUp));
}

#[test]
fn an_expired_invite_is_refused_by_the_inviters_clock() {
    let mut store = InviteStore::default();
    let (_, secret) = store.create(NOW, 60, 1, None).unwrap();
    assert_eq!(store.redeem(&secret, NOW + 60), Err(JoinRefusal::Expired));
    // Remembered for a day after expiry, then pruned: only then "unknown".
    assert!(!store.prune(NOW + 60 + KEEP_AFTER_EXPIRY - 1));
    assert!(store.prune(NOW + 60 + KEEP_AFTER_EXPIRY));
    assert_eq!(store.redeem(&secret, NOW + 60), Err(JoinRefusal::Unknown));
}

#[test]
fn a_forged_secret_is_unknown_and_spends_nothing() {
    let mut store = InviteStore::default();
    let (_, secret) = store.create(NOW, 3600, 1, None).unwrap();
    let mut forged = secret;
    forged[0] ^= 1;
    assert_eq!(store.redeem(&forged, NOW), Err(JoinRefusal::Unknown));
    assert_eq!(store.redeem(&secret[..31], NOW), Err(JoinRefusal::Unknown));
    assert_eq!(store.list()[0].used, 0);
    store.redeem(&secret, NOW).unwrap();
}

#[test]
fn a_revoked_invite_is_refused() {
    let mut store = InviteStore::default();
    let (record, secret) = store.create(NOW, 3600, 2, None).unwrap();
    assert!(matches!(
        store.revoke("nope"),
        Err(InviteError::NotFound(_))
    ));
    store.revoke(&record.id[..4]).unwrap();
    assert_eq!(store.redeem(&secret, NOW), Err(JoinRefusal::Revoked));
    assert_eq!(store.list()[0].status(NOW), "revoked");
}

#[test]
fn the_file_holds_only_the_hash_of_the_secret_and_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(INVITES_FILE);
    let mut store = InviteStore::default();
    let (_, secret) = store.create(NOW, 3600, 1, Some("pi".into())).unwrap();
    store.save(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&hex::encode(secret)));
    assert!(text.contains(&hex::encode(Sha256::digest(secret))));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut loaded = InviteStore::load(&path).unwrap();
    assert_eq!(loaded.list(), store.list());
    loaded.redeem(&secret, NOW).unwrap();
    assert!(
        InviteStore::load(&dir.path().join("absent"))
            .unwrap()
            .list()
            .is_empty()
    );
}

#[test]
fn bounds_are_enforced_at_creation() {
    let mut store = InviteStore::default();
    assert!(matches!(
        store.create(NOW, 3600, 0, None),
        Err(InviteError::Uses)
    ));
    assert!(matches!(
        store.create(NOW, MAX_TTL_SECS + 1, 1, None),
        Err(InviteError::Ttl)
    ));
    assert!(matches!(
        store.create(NOW, 60, 1, Some("a\nb".into())),
        Err(InviteError::Name)
    ));
    for _ in 0..MAX_INVITES {
        store.create(NOW, 60, 1, None).unwrap();
    }
    assert!(matches!(
        store.create(NOW, 60, 1, None),
        Err(InviteError::Full)
    ));
    // Once the old ones are long dead, room again.
    store
        .create(NOW + 60 + KEEP_AFTER_EXPIRY, 60, 1, None)
        .unwrap();
    assert_eq!(store.list().len(), 1);
}
