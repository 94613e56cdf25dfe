use super::*;
use clap::CommandFactory;

#[test]
fn help_explains_every_option_with_an_example() {
    let mut cmd = Cli::command();
    cmd.build();
    for arg in cmd.get_arguments() {
        if ["help", "version"].contains(&arg.get_id().as_str()) {
            continue;
        }
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        assert!(
            help.contains("Example"),
            "--{} lacks an example: {help}",
            arg.get_id()
        );
    }
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        let about = sub
            .get_long_about()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            about.contains("Example"),
            "{} lacks an example",
            sub.get_name()
        );
        for arg in sub.get_arguments() {
            if arg.is_global_set() || ["help", "version"].contains(&arg.get_id().as_str()) {
                continue;
            }
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            assert!(
                help.contains("Example"),
                "{} --{} lacks an example",
                sub.get_name(),
                arg.get_id()
            );
        }
    }
    Cli::command().debug_assert();
}

#[test]
fn options_go_before_or_after_the_scenario() {
    let a = Cli::try_parse_from(["hotline-bench", "--rate", "5", "baseline"]).unwrap();
    let b = Cli::try_parse_from(["hotline-bench", "baseline", "--rate", "5"]).unwrap();
    assert_eq!(a.opts.rate, 5.0);
    assert_eq!(b.opts.rate, 5.0);
    let n = Cli::try_parse_from(["hotline-bench", "neighbours", "--duration", "3"]).unwrap();
    assert_eq!(n.opts.duration, 3.0);
    assert!(matches!(
        n.scenario,
        Scenario::Neighbours {
            quiet_pairs: 8,
            quiet_rate,
            flood_window: 64,
            flood_wrong_streams: false,
        } if quiet_rate == 5.0
    ));
    let c = Cli::try_parse_from(["hotline-bench", "flood", "--flash-rate", "9"]).unwrap();
    assert!(matches!(c.scenario, Scenario::Flood { flash_rate, .. } if flash_rate == 9.0));
    assert!(Cli::try_parse_from(["hotline-bench", "baseline", "--relay", "127.0.0.1:1"]).is_err());
}

#[test]
fn neighbours_can_flood_on_the_wrong_streams() {
    let n = Cli::try_parse_from([
        "hotline-bench",
        "neighbours",
        "--quiet-pairs",
        "2",
        "--duration",
        "3",
        "--flood-wrong-streams",
    ])
    .unwrap();
    assert!(matches!(
        n.scenario,
        Scenario::Neighbours {
            quiet_pairs: 2,
            flood_wrong_streams: true,
            ..
        }
    ));
    // The flag belongs to neighbours only.
    assert!(Cli::try_parse_from(["hotline-bench", "baseline", "--flood-wrong-streams"]).is_err());
    // It lands in the report's params.
    let json = serde_json::to_value(&n.scenario).unwrap();
    assert_eq!(json["neighbours"]["flood_wrong_streams"], true);
}

#[test]
fn bad_values_name_the_option() {
    let parse = |args: &[&str]| {
        let mut v = vec!["hotline-bench", "baseline"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v)
            .unwrap()
            .opts
            .validate()
            .unwrap_err()
            .to_string()
    };
    assert!(parse(&["--rate", "0"]).contains("--rate"));
    assert!(parse(&["--warmup", "20"]).contains("--warmup"));
    assert!(parse(&["--pairs", "0"]).contains("--pairs"));
    assert!(parse(&["--size", "999999999"]).contains("--size"));
    assert!(parse(&["--mix", "routine=x"]).contains("--mix"));
}

#[test]
fn floor_takes_a_kind_and_alone_means_both() {
    let floor = |args: &[&str]| {
        let mut v = vec!["hotline-bench", "baseline"];
        v.extend_from_slice(args);
        match Cli::try_parse_from(v).map(|c| c.scenario) {
            Ok(Scenario::Baseline { floor, floor_dir }) => Ok((floor, floor_dir)),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        }
    };
    assert_eq!(floor(&[]).unwrap(), (None, None));
    assert_eq!(floor(&["--floor"]).unwrap().0, Some(FloorChoice::Both));
    assert_eq!(
        floor(&["--floor", "--rate", "5"]).unwrap().0,
        Some(FloorChoice::Both)
    );
    assert_eq!(
        floor(&["--floor", "bare"]).unwrap().0,
        Some(FloorChoice::Bare)
    );
    assert_eq!(
        floor(&["--floor", "durable", "--floor-dir", "/var/tmp"]).unwrap(),
        (Some(FloorChoice::Durable), Some(PathBuf::from("/var/tmp")))
    );
    assert!(floor(&["--floor", "wet"]).is_err());
    assert!(
        floor(&["--floor-dir", "/var/tmp"]).is_err(),
        "needs --floor"
    );

    let kind = |args: &[&str]| {
        let mut v = vec!["hotline-bench", "floor"];
        v.extend_from_slice(args);
        match Cli::try_parse_from(v).map(|c| c.scenario) {
            Ok(Scenario::Floor { kind, durable, .. }) => Ok((kind, durable)),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        }
    };
    assert_eq!(kind(&[]).unwrap(), (FloorChoice::Bare, false));
    assert_eq!(kind(&["--durable"]).unwrap(), (FloorChoice::Bare, true));
    assert_eq!(
        kind(&["--kind", "both"]).unwrap(),
        (FloorChoice::Both, false)
    );
    assert!(kind(&["--durable", "--kind", "bare"]).is_err());
}

#[test]
fn scale_steps_grow_by_powers_of_ten() {
    assert_eq!(scale_steps("1,10,100", None).unwrap(), [1, 10, 100]);
    assert_eq!(
        scale_steps("1,10,100", Some(1000)).unwrap(),
        [1, 10, 100, 1000]
    );
    assert_eq!(scale_steps("1,10,100", Some(50)).unwrap(), [1, 10, 50]);
    assert_eq!(scale_steps("5,2", None).unwrap(), [2, 5]);
    assert!(scale_steps("1,x", None).is_err());
    assert!(scale_steps("0", None).is_err());
}
