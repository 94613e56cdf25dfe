use std::os::unix::fs::PermissionsExt;

use redb::ReadableDatabase;

use super::*;

const ROWS: TableDefinition<'_, u64, u64> = TableDefinition::new("rows");

fn schema(unversioned: Unversioned) -> Schema {
    Schema {
        owner: "test",
        version: 1,
        unversioned,
    }
}

fn open_rows(path: &Path, unversioned: Unversioned) -> Result<Database, OpenError> {
    open(path, schema(unversioned), |txn| {
        txn.open_table(ROWS).in_table(ROWS)?;
        Ok(())
    })
}

/// A file written by hand: `rows` holds 1 → 1, and `meta` holds `version` if there is one.
fn write_by_hand(path: &Path, version: Option<u64>) {
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(ROWS).unwrap().insert(1, 1).unwrap();
    if let Some(version) = version {
        txn.open_table(META)
            .unwrap()
            .insert(SCHEMA_VERSION_KEY, version)
            .unwrap();
    }
    txn.commit().unwrap();
}

fn stored_version(path: &Path) -> Option<u64> {
    let db = Database::create(path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = match txn.open_table(META) {
        Err(redb::TableError::TableDoesNotExist(_)) => return None,
        meta => meta.unwrap(),
    };
    meta.get(SCHEMA_VERSION_KEY).unwrap().map(|v| v.value())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_second_open_is_refused_until_the_first_is_dropped_and_rows_survive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let db = open_rows(&path, Unversioned::Refuse).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(ROWS).unwrap().insert(7, 70).unwrap();
        txn.commit().unwrap();
        let err = open_rows(&path, Unversioned::Refuse).unwrap_err();
        assert!(
            matches!(&err, OpenError::Locked { owner: "test", path: p } if *p == path),
            "{err}"
        );
        let line = err.to_string();
        assert!(line.contains("another test is already running"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }
    let db = open_rows(&path, Unversioned::Refuse).unwrap();
    let txn = db.begin_read().unwrap();
    let rows = txn.open_table(ROWS).unwrap();
    assert_eq!(rows.get(7).unwrap().unwrap().value(), 70);
}

#[test]
fn a_new_store_is_private_and_versioned() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").join("store");
    let path = data.join("store.redb");
    drop(open_rows(&path, Unversioned::Refuse).unwrap());
    assert_eq!(mode(&data), DIR_MODE);
    assert_eq!(mode(&dir.path().join("data")), DIR_MODE);
    assert_eq!(mode(&path), FILE_MODE);
    assert_eq!(stored_version(&path), Some(1));
}

#[test]
fn an_existing_directory_keeps_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
    drop(open_rows(&dir.path().join("store.redb"), Unversioned::Refuse).unwrap());
    assert_eq!(mode(dir.path()), 0o750);
}

#[test]
fn another_schema_version_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    write_by_hand(&path, Some(99));
    for unversioned in [Unversioned::Adopt, Unversioned::Refuse] {
        let err = open_rows(&path, unversioned).unwrap_err();
        assert!(
            matches!(
                err,
                OpenError::Schema {
                    found: 99,
                    expected: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }
    assert_eq!(stored_version(&path), Some(99));
}

#[test]
fn a_file_without_a_version_is_refused_or_adopted_as_the_schema_says() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    write_by_hand(&path, None);
    let err = open_rows(&path, Unversioned::Refuse).unwrap_err();
    assert!(matches!(err, OpenError::Unversioned { .. }), "{err}");
    assert_eq!(stored_version(&path), None);

    drop(open_rows(&path, Unversioned::Adopt).unwrap());
    assert_eq!(stored_version(&path), Some(1));
    drop(open_rows(&path, Unversioned::Refuse).unwrap());
}

#[test]
fn a_table_error_names_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    write_by_hand(&path, Some(1));
    // `rows` is u64 → u64 on disk; opening it with other types fails inside `open`.
    let wrong: TableDefinition<'_, &str, u64> = TableDefinition::new("rows");
    let err = open(&path, schema(Unversioned::Refuse), |txn| {
        txn.open_table(wrong).in_table(wrong)?;
        Ok(())
    })
    .unwrap_err();
    let OpenError::Prepare {
        error: DbError::Table { table, .. },
        ..
    } = &err
    else {
        panic!("not a table error: {err}");
    };
    assert_eq!(table, "rows");
    assert!(!err.to_string().contains('\n'), "{err}");
}

#[test]
fn tighten_clears_group_and_other_bits_and_never_adds_any() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(tighten(&path, FILE_MODE).unwrap(), Some(0o644));
    assert_eq!(mode(&path), 0o600);
    assert_eq!(tighten(&path, FILE_MODE).unwrap(), None);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert_eq!(tighten(&path, FILE_MODE).unwrap(), None);
    assert_eq!(mode(&path), 0o400);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(tighten(dir.path(), DIR_MODE).unwrap(), Some(0o755));
    assert_eq!(mode(dir.path()), 0o700);
}
