//! `respmesh-init --dry-run` prints exactly the checked-in rulesets (tests/golden/). After an
//! intended change: RESPMESH_BLESS=1 cargo test -p respmesh-init --test golden.

use std::process::Command;

fn dry_run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_respmesh-init")).arg("--dry-run").args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn dry_run_rulesets_match_the_golden_files() {
    let cases: &[(&str, &[&str])] = &[
        ("default.txt", &[]),
        ("ports-and-exclusions.txt", &["--ports", "6380,6379,7000", "--exclude-cidrs", "10.0.0.0/8, 192.168.1.7"]),
        (
            "dual-stack.txt",
            &[
                "--ipv6",
                "on",
                "--exclude-cidrs",
                "10.96.0.0/12,fd00:10:96::/112",
                "--proxy-port",
                "15400",
                "--proxy-uid",
                "2000",
            ],
        ),
    ];
    let dir = respmesh_kubetest::workspace_root().join("init/tests/golden");
    for (file, args) in cases {
        let got = dry_run(args);
        let path = dir.join(file);
        if std::env::var_os("RESPMESH_BLESS").is_some() {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(got, want, "{file}: the ruleset changed; RESPMESH_BLESS=1 to accept");
    }
}

#[test]
fn bad_arguments_are_clear_errors() {
    for (args, want) in [
        (&["--ports", "0"][..], "--ports: \"0\" is not a port"),
        (&["--ports", ""][..], "--ports: at least one port is needed"),
        (&["--exclude-cidrs", "10.0.0.0/40"][..], "the prefix length is more than 32"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_respmesh-init")).arg("--dry-run").args(args).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
