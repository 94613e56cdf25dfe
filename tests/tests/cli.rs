//! The CLI against a stopped node, bad arguments and bad configs: one clear line, non-zero exit.

use hotline_e2e::{Exercise, certs_init, hotline};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn cli_against_a_stopped_node_says_so_in_one_line() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let cfg = ex.config("us");
    for args in [
        vec!["status", "--config", cfg.to_str().unwrap()],
        vec!["send", "--config", cfg.to_str().unwrap(), "hello"],
        vec!["inbox", "--config", cfg.to_str().unwrap()],
        vec!["ack", "--config", cfg.to_str().unwrap(), "jp:main:flash:1"],
    ] {
        let o = hotline(&args);
        assert!(!o.status.success(), "{args:?} should fail");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("error: node is not running"), "{err}");
    }
}

#[test]
fn bad_config_is_one_line_naming_the_problem() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let cfg = ex.config("us");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}\nrelay_nmae = \"x\"\n")).unwrap();
    let o = hotline(&["node", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("relay_nmae"), "names the unknown key: {err}");
    assert_eq!(
        err.trim()
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count(),
        1,
        "{err}"
    );

    std::fs::write(&cfg, text.replace("us.pem", "missing.pem")).unwrap();
    let o = hotline(&["node", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing.pem"), "{}", stderr(&o));
}

#[test]
fn certs_init_refuses_to_overwrite_and_validates_pairs() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let out = ex.dir.path().to_str().unwrap();
    let o = certs_init(out, &["us", "jp"], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    let o = certs_init(out, &["a", "b", "c"], &["--force"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--pair"), "{}", stderr(&o));
}

#[test]
fn second_node_on_the_same_data_dir_exits_with_one_line() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let _first = ex.start_node("us");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(ex.control("us"));
    let o = hotline(&["node", "--config", ex.config("us").to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("already running"), "{err}");
}
