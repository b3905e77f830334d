//! Tests of service specs: parsing, validation, the CLI and TOML forms, `$PORT` expansion.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::ports::{PortSource, Proto};

fn chain_example() -> &'static str {
    include_str!("../../../deploy/examples/chain.toml")
}

fn crashy_example() -> &'static str {
    include_str!("../../../deploy/examples/crashy.toml")
}

fn cli(name: &str, command: &[&str]) -> CliServiceParts {
    CliServiceParts {
        name: name.to_string(),
        command: command.iter().map(|part| part.to_string()).collect(),
        ..CliServiceParts::default()
    }
}

fn spec_with(name: &str, after: &[&str]) -> ServiceSpec {
    let mut spec = ServiceSpec::new(name, "true");
    spec.after = after.iter().map(|dep| dep.to_string()).collect();
    spec
}

#[test]
fn example_files_parse_and_validate() {
    let chain = parse_service_file(chain_example()).expect("chain.toml is valid");
    let names: Vec<&str> = chain.iter().map(|spec| spec.name.as_str()).collect();
    assert_eq!(names, ["db", "api", "web"]);
    let web = &chain[2];
    assert_eq!(web.after, ["api"]);
    assert_eq!(
        web.ports,
        [PortSpec {
            name: Some("http".to_string()),
            ..PortSpec::auto()
        }]
    );
    let health = web.health.as_ref().expect("web has a health check");
    assert_eq!(
        health.check,
        HealthCheck::Http {
            path: "/".to_string()
        }
    );
    assert!(web.args.iter().any(|arg| arg == "${PORT_HTTP}"));
    let port_at = web
        .args
        .iter()
        .position(|arg| arg == "${PORT_HTTP}")
        .expect("web's args name its port");
    assert_eq!(
        expand_args(&web.args, &web.port_env(&[20002]))[port_at],
        "20002",
        "web's args expand"
    );
    let crashy = parse_service_file(crashy_example()).expect("crashy.toml is valid");
    assert!(crashy.iter().any(|spec| spec.name == "crashy"));
}

#[test]
fn defaults_are_the_documented_ones() {
    let specs = parse_service_file(
        r#"
        [[service]]
        name = "db"
        command = "python3"
        args = ["-m", "http.server", "$PORT"]
        ports = [{}]
        health = { check = "tcp" }
        "#,
    )
    .expect("valid");
    let spec = &specs[0];
    assert_eq!(spec.ports, [PortSpec::auto()]);
    assert_eq!(spec.restart, RestartSpec::default());
    assert_eq!(spec.restart.policy, RestartPolicy::Always);
    assert_eq!(spec.restart.first_delay, Duration::from_millis(80));
    assert_eq!(spec.restart.factor, 2.0);
    assert_eq!(spec.restart.cap, Duration::from_secs(60));
    assert_eq!(spec.restart.jitter, 0.1);
    assert_eq!(spec.restart.reset_after, Duration::from_secs(30));
    assert_eq!(spec.restart.failed_after, 5);
    assert!(spec.restart.keep_retrying_when_failed);
    assert_eq!(spec.stop_grace, Duration::from_secs(10));
    let health = spec.health.as_ref().expect("health");
    assert_eq!(health, &HealthSpec::new(HealthCheck::Tcp));
    assert_eq!(health.interval, Duration::from_secs(2));
    assert_eq!(health.timeout, Duration::from_secs(1));
    assert_eq!(health.start_grace, Duration::from_secs(10));
    assert_eq!(health.start_interval, Duration::from_millis(250));
    assert_eq!(health.failures_before_unhealthy, 3);
    assert_eq!(spec.target, None);
}

#[test]
fn every_field_round_trips_through_toml() {
    let text = r#"
        [[service]]
        name = "api"
        command = "/usr/bin/api"
        args = ["--listen", "127.0.0.1:${PORT}", "--admin", "$PORT_ADMIN", "--metrics=$PORT_METRICS"]
        working_dir = "/srv/api"
        env = { RUST_LOG = "info" }
        after = ["db"]
        ports = [
            { name = "http" },
            { name = "admin", port = 9000 },
            { name = "metrics", pool = "metrics", proto = "tcp" },
            { name = "gossip", port = "auto", proto = "udp" },
        ]
        stop_grace = "30s"
        node = "pi-1"

        [service.health]
        check = "http"
        path = "/healthz"
        port = "http"
        interval = "5s"
        timeout = "500ms"
        start_grace = "1m"
        start_interval = "100ms"
        failures_before_unhealthy = 2

        [service.restart]
        policy = "on-failure"
        first_delay = "200ms"
        factor = 3.0
        cap = "2m"
        jitter = 0.2
        reset_after = "1h"
        failed_after = 10
        keep_retrying_when_failed = false

        [[service]]
        name = "db"
        command = "db"
    "#;
    let specs = parse_service_file(text).expect("valid");
    let api = &specs[0];
    assert_eq!(api.ports[1].source, PortSource::Fixed(9000));
    assert_eq!(
        api.ports[2].source,
        PortSource::Auto {
            pool: "metrics".to_string()
        }
    );
    assert_eq!(api.ports[3].proto, Proto::Udp);
    assert_eq!(api.restart.policy, RestartPolicy::OnFailure);
    assert_eq!(api.restart.cap, Duration::from_secs(120));
    assert_eq!(api.stop_grace, Duration::from_secs(30));
    let health = api.health.as_ref().expect("health");
    assert_eq!(health.timeout, Duration::from_millis(500));
    assert_eq!(health.start_grace, Duration::from_secs(60));

    let written = toml::to_string(&ServiceFile {
        service: specs.clone(),
    })
    .expect("serializes");
    let reread = parse_service_file(&written).expect("re-reads");
    assert_eq!(reread, specs);
    // JSON too (the API and the document use serde).
    let json = serde_json::to_string(&specs).expect("json");
    let from_json: Vec<ServiceSpec> = serde_json::from_str(&json).expect("json back");
    assert_eq!(from_json, specs);
}

#[test]
fn typos_and_bad_values_in_toml_are_refused() {
    for (text, needle) in [
        (
            "[[service]]\nname = \"a\"\ncommand = \"x\"\nafter_ = [\"b\"]\n",
            "unknown field `after_`",
        ),
        (
            "[[service]]\nname = \"a\"\ncommand = \"x\"\nports = [{ port = 70000 }]\n",
            "port 70000 is out of range",
        ),
        (
            "[[service]]\nname = \"a\"\ncommand = \"x\"\nports = [{ port = 80, pool = \"web\" }]\n",
            "`pool` applies only to auto ports",
        ),
        (
            "[[service]]\nname = \"a\"\ncommand = \"x\"\nports = [{ port = \"any\" }]\n",
            "expected a port number or \"auto\"",
        ),
        (
            "[[service]]\nname = \"a\"\ncommand = \"x\"\nhealth = { check = \"ping\" }\n",
            "unknown check `ping`",
        ),
        (
            "[[service]]\nname = \"a\"\ncommand = \"x\"\nhealth = { check = \"exec\" }\n",
            "exec checks need `command",
        ),
        (
            "[[service]]\nname = \"a\"\ncommand = \"x\"\nhealth = { check = \"tcp\", path = \"/\" }\n",
            "`path` applies only to http",
        ),
        (
            "[[service]]\nname = \"a\"\ncommand = \"x\"\nstop_grace = \"10\"\n",
            "expected a whole number and a unit",
        ),
        (
            "[[service]]\nname = \"a\"\ncommand = \"x\"\nstop_grace = \"1.5s\"\n",
            "whole number",
        ),
        (
            "[[service]]\nname = \"a\"\ncommand = \"x\"\nrestart = { policy = \"sometimes\" }\n",
            "unknown variant `sometimes`",
        ),
    ] {
        let err = parse_service_file(text).expect_err(text).to_string();
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
    }
}

#[test]
fn names_follow_dns_label_rules() {
    assert!(check_name("db").is_ok());
    assert!(check_name("web-2").is_ok());
    assert!(check_name(&"a".repeat(63)).is_ok());
    for bad in [
        "",
        "Web",
        "web_2",
        "-web",
        "web-",
        "wéb",
        "a.b",
        &"a".repeat(64),
    ] {
        let spec = ServiceSpec::new(bad, "true");
        assert!(
            matches!(spec.validate(), Err(SpecError::BadName { .. })),
            "{bad:?} should be refused"
        );
    }
    assert_eq!(
        ServiceSpec::new("Web", "true")
            .validate()
            .expect_err("bad")
            .to_string(),
        "bad service name `Web`: only lowercase letters a-z, digits 0-9 and '-' are allowed"
    );
}

#[test]
fn single_spec_validation_names_the_problem() {
    let base = || ServiceSpec::new("svc", "run");
    let mut cases: Vec<(ServiceSpec, &str)> = Vec::new();

    cases.push((
        ServiceSpec::new("svc", "  "),
        "service `svc`: the command is empty",
    ));
    let mut spec = base();
    spec.args = vec!["ok".to_string(), "a\0b".to_string()];
    cases.push((spec, "service `svc`: argument 2 contains a NUL byte"));
    let mut spec = base();
    spec.working_dir = Some(PathBuf::from("srv/app"));
    cases.push((spec, "working_dir `srv/app` must be an absolute path"));
    let mut spec = base();
    spec.env.insert("PORT".to_string(), "1".to_string());
    cases.push((
        spec,
        "bad environment variable `PORT`: reserved: mesh sets it",
    ));
    let mut spec = base();
    spec.env.insert("PORT_HTTP".to_string(), "1".to_string());
    cases.push((spec, "`PORT_HTTP`: reserved"));
    let mut spec = base();
    spec.env.insert("1X".to_string(), "1".to_string());
    cases.push((spec, "`1X`: names are letters"));
    let mut spec = base();
    spec.after = vec!["svc".to_string()];
    cases.push((spec, "service `svc` depends on itself"));
    let mut spec = base();
    spec.after = vec!["db".to_string(), "db".to_string()];
    cases.push((spec, "dependency `db` is listed twice"));
    let mut spec = base();
    spec.ports = vec![PortSpec {
        source: PortSource::Fixed(0),
        ..PortSpec::auto()
    }];
    cases.push((spec, "port 0 is out of range (1-65535)"));
    let mut spec = base();
    spec.ports = vec![
        PortSpec {
            name: Some("a".to_string()),
            source: PortSource::Fixed(80),
            proto: Proto::Tcp,
        },
        PortSpec {
            name: Some("b".to_string()),
            source: PortSource::Fixed(80),
            proto: Proto::Tcp,
        },
    ];
    cases.push((spec, "port 80/tcp is listed twice"));
    let mut spec = base();
    spec.ports = vec![PortSpec::auto(), PortSpec::auto()];
    cases.push((spec, "has 2 ports, so each needs a name"));
    let mut spec = base();
    spec.ports = vec![
        PortSpec {
            name: Some("a".to_string()),
            ..PortSpec::auto()
        },
        PortSpec {
            name: Some("a".to_string()),
            ..PortSpec::auto()
        },
    ];
    cases.push((spec, "port name `a` is used twice"));
    let mut spec = base();
    spec.args = vec!["--port=$PORT".to_string()];
    cases.push((
        spec,
        "argument uses $PORT, but the service has no such port",
    ));
    let mut spec = base();
    spec.ports = vec![PortSpec::auto()];
    spec.args = vec!["${PORT_ADMIN}".to_string()];
    cases.push((spec, "uses $PORT_ADMIN"));
    let mut spec = base();
    spec.health = Some(HealthSpec::new(HealthCheck::Tcp));
    cases.push((
        spec,
        "tcp checks probe the service's PORT, but it declares no ports",
    ));
    let mut spec = base();
    spec.ports = vec![PortSpec::auto()];
    spec.health = Some(HealthSpec::new(HealthCheck::Http {
        path: "healthz".to_string(),
    }));
    cases.push((spec, "http path `healthz` must start with '/'"));
    let mut spec = base();
    spec.ports = vec![PortSpec::auto()];
    spec.health = Some(HealthSpec {
        port: Some("admin".to_string()),
        ..HealthSpec::new(HealthCheck::Tcp)
    });
    cases.push((spec, "port `admin` is not one of the service's ports"));
    let mut spec = base();
    spec.ports = vec![PortSpec {
        proto: Proto::Udp,
        ..PortSpec::auto()
    }];
    spec.health = Some(HealthSpec::new(HealthCheck::Tcp));
    cases.push((spec, "tcp checks need a tcp port"));
    let mut spec = base();
    spec.health = Some(HealthSpec::new(HealthCheck::Exec { command: vec![] }));
    cases.push((spec, "exec checks need a command"));
    let mut spec = base();
    spec.health = Some(HealthSpec {
        interval: Duration::ZERO,
        ..HealthSpec::new(HealthCheck::Exec {
            command: vec!["true".to_string()],
        })
    });
    cases.push((
        spec,
        "service `svc`: health.interval must be greater than zero",
    ));
    let mut spec = base();
    spec.health = Some(HealthSpec {
        failures_before_unhealthy: 0,
        ..HealthSpec::new(HealthCheck::Exec {
            command: vec!["true".to_string()],
        })
    });
    cases.push((spec, "failures_before_unhealthy must be at least 1"));
    let mut spec = base();
    spec.restart.first_delay = Duration::ZERO;
    cases.push((spec, "restart.first_delay must be greater than zero"));
    let mut spec = base();
    spec.restart.factor = 0.5;
    cases.push((spec, "factor must be a number ≥ 1, got 0.5"));
    let mut spec = base();
    spec.restart.factor = f64::NAN;
    cases.push((spec, "factor must be a number ≥ 1"));
    let mut spec = base();
    spec.restart.cap = Duration::from_millis(50);
    cases.push((spec, "cap (50ms) is shorter than first_delay (80ms)"));
    let mut spec = base();
    spec.restart.jitter = 1.0;
    cases.push((spec, "jitter is a fraction, 0 ≤ jitter < 1, got 1"));
    let mut spec = base();
    spec.restart.failed_after = 0;
    cases.push((spec, "failed_after must be at least 1"));
    let mut spec = base();
    spec.stop_grace = Duration::ZERO;
    cases.push((spec, "stop_grace must be greater than zero"));
    let mut spec = base();
    spec.target = Some("pi 1".to_string());
    cases.push((spec, "bad node name `pi 1`"));

    for (spec, needle) in cases {
        let err = spec.validate().expect_err(needle).to_string();
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
    }
}

#[test]
fn set_validation_finds_unknown_dependencies_cycles_and_clashes() {
    let err = validate_set(&[spec_with("api", &["db"])]).expect_err("unknown");
    assert_eq!(err.to_string(), "service `api`: unknown dependency `db`");

    let err = validate_set(&[spec_with("a", &["b"]), spec_with("b", &["a"])]).expect_err("cycle");
    assert_eq!(err.to_string(), "dependency cycle: a -> b -> a");

    let err = validate_set(&[spec_with("a", &[]), spec_with("a", &[])]).expect_err("dup");
    assert_eq!(err.to_string(), "service `a` is defined twice");

    let fixed = |name: &str, node: Option<&str>| {
        let mut spec = spec_with(name, &[]);
        spec.ports = vec![PortSpec {
            source: PortSource::Fixed(8080),
            ..PortSpec::auto()
        }];
        spec.target = node.map(String::from);
        spec
    };
    let err =
        validate_set(&[fixed("api", Some("pi")), fixed("web", Some("pi"))]).expect_err("clash");
    assert_eq!(
        err.to_string(),
        "services `api` and `web` both ask for fixed port 8080/tcp on the same node"
    );
    validate_set(&[fixed("api", Some("pi")), fixed("web", Some("nuc"))]).expect("different nodes");

    validate_set(&[
        spec_with("db", &[]),
        spec_with("api", &["db"]),
        spec_with("web", &["api", "db"]),
    ])
    .expect("a DAG");
}

#[test]
fn cli_parts_build_a_spec() {
    let spec = ServiceSpec::from_cli_parts(CliServiceParts {
        after: vec!["db".to_string()],
        ports: vec!["auto".to_string()],
        health: Some("http:/healthz".to_string()),
        restart: Some("on-failure".to_string()),
        node: Some("pi-1".to_string()),
        ..cli("api", &["python3", "-m", "http.server", "$PORT"])
    })
    .expect("valid");
    assert_eq!(spec.command, "python3");
    assert_eq!(spec.args, ["-m", "http.server", "$PORT"]);
    assert_eq!(spec.after, ["db"]);
    assert_eq!(spec.ports, [PortSpec::auto()]);
    assert_eq!(
        spec.health.as_ref().map(|health| &health.check),
        Some(&HealthCheck::Http {
            path: "/healthz".to_string()
        })
    );
    assert_eq!(spec.restart.policy, RestartPolicy::OnFailure);
    assert_eq!(spec.target.as_deref(), Some("pi-1"));
}

#[test]
fn cli_port_and_health_forms() {
    assert_eq!(PortSpec::from_cli("auto").expect("valid"), PortSpec::auto());
    assert_eq!(
        PortSpec::from_cli("8080").expect("valid").source,
        PortSource::Fixed(8080)
    );
    assert_eq!(
        PortSpec::from_cli("metrics=auto:metrics").expect("valid"),
        PortSpec {
            name: Some("metrics".to_string()),
            source: PortSource::Auto {
                pool: "metrics".to_string()
            },
            proto: Proto::Tcp
        }
    );
    assert_eq!(
        PortSpec::from_cli("dns=5353/udp").expect("valid"),
        PortSpec {
            name: Some("dns".to_string()),
            source: PortSource::Fixed(5353),
            proto: Proto::Udp
        }
    );
    for (text, needle) in [
        (
            "70000",
            "bad --port `70000`: port numbers go from 1 to 65535",
        ),
        ("0", "port numbers go from 1 to 65535"),
        ("http", "expected auto, auto:POOL or a port number"),
        ("auto/sctp", "unknown protocol `sctp`"),
    ] {
        let err = PortSpec::from_cli(text).expect_err(text).to_string();
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
    }

    assert_eq!(
        HealthSpec::from_cli("tcp").expect("valid").check,
        HealthCheck::Tcp
    );
    assert_eq!(
        HealthSpec::from_cli("http").expect("valid").check,
        HealthCheck::Http {
            path: "/".to_string()
        }
    );
    assert_eq!(
        HealthSpec::from_cli("exec:pg_isready -h 127.0.0.1")
            .expect("valid")
            .check,
        HealthCheck::Exec {
            command: vec![
                "pg_isready".to_string(),
                "-h".to_string(),
                "127.0.0.1".to_string()
            ]
        }
    );
    for (text, needle) in [
        ("http:healthz", "must start with '/'"),
        ("exec:", "exec needs a command"),
        ("exec:   ", "exec needs a command"),
        ("grpc", "expected tcp, http, http:PATH or exec:CMD"),
        ("tcp:8080", "expected tcp"),
    ] {
        let err = HealthSpec::from_cli(text).expect_err(text).to_string();
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
    }
}

#[test]
fn cli_errors_name_the_problem() {
    let err = ServiceSpec::from_cli_parts(cli("api", &[])).expect_err("no command");
    assert_eq!(err.to_string(), "service `api`: the command is empty");
    let err = ServiceSpec::from_cli_parts(CliServiceParts {
        restart: Some("sometimes".to_string()),
        ..cli("api", &["x"])
    })
    .expect_err("bad policy");
    assert_eq!(
        err.to_string(),
        "bad --restart `sometimes`: expected always, on-failure or never"
    );
    let err = ServiceSpec::from_cli_parts(CliServiceParts {
        health: Some("tcp".to_string()),
        ..cli("api", &["x"])
    })
    .expect_err("tcp without a port");
    assert!(err.to_string().contains("declares no ports"), "{err}");
    let err = ServiceSpec::from_cli_parts(cli("API", &["x"])).expect_err("bad name");
    assert!(matches!(err, SpecError::BadName { .. }));
    let err = ServiceSpec::from_cli_parts(CliServiceParts {
        ports: vec!["auto".to_string(), "auto".to_string()],
        ..cli("api", &["x"])
    })
    .expect_err("two unnamed ports");
    assert!(
        matches!(err, SpecError::UnnamedPort { index: 1, .. }),
        "{err}"
    );
}

#[test]
fn port_env_names_every_port() {
    let mut spec = ServiceSpec::new("api", "x");
    spec.ports = vec![
        PortSpec {
            name: Some("http".to_string()),
            ..PortSpec::auto()
        },
        PortSpec {
            name: Some("admin-ui".to_string()),
            ..PortSpec::auto()
        },
    ];
    let env = spec.port_env(&[20000, 20001]);
    assert_eq!(
        env,
        BTreeMap::from([
            ("PORT".to_string(), 20000),
            ("PORT_HTTP".to_string(), 20000),
            ("PORT_ADMIN_UI".to_string(), 20001),
        ])
    );
    let mut single = ServiceSpec::new("db", "x");
    single.ports = vec![PortSpec::auto()];
    assert_eq!(
        single.port_env(&[25000]),
        BTreeMap::from([("PORT".to_string(), 25000)])
    );
}

#[test]
fn expansion_replaces_only_port_variables() {
    let ports = BTreeMap::from([
        ("PORT".to_string(), 20000),
        ("PORT_ADMIN".to_string(), 20001),
    ]);
    let args: Vec<String> = [
        "$PORT",
        "--listen=127.0.0.1:${PORT}",
        "${PORT}0",
        "$PORT_ADMIN",
        "$PORT/x",
        "$$PORT",
        "$$$PORT",
        "cost: 5$",
        "$HOME",
        "${HOME}",
        "$PORTAL",
        "$PORT_OTHER",
        "${PORT",
        "$1",
        "plain",
        "",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    assert_eq!(
        expand_args(&args, &ports),
        [
            "20000",
            "--listen=127.0.0.1:20000",
            "200000",
            "20001",
            "20000/x",
            "$PORT",
            "$20000",
            "cost: 5$",
            "$HOME",
            "${HOME}",
            "$PORTAL",
            "$PORT_OTHER",
            "${PORT",
            "$1",
            "plain",
            "",
        ]
    );
    // Non-ASCII text passes through.
    assert_eq!(expand_port_variables("ü$PORTü", &ports), "ü20000ü");
}

#[test]
fn durations_parse_and_print() {
    assert_eq!(
        duration_text::parse("250ms"),
        Ok(Duration::from_millis(250))
    );
    assert_eq!(duration_text::parse("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(duration_text::parse("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(duration_text::parse("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(duration_text::parse("0s"), Ok(Duration::ZERO));
    assert!(duration_text::parse("s").is_err());
    assert!(duration_text::parse("-1s").is_err());
    assert!(duration_text::parse("99999999999999999999h").is_err());
    for (duration, text) in [
        (Duration::from_millis(100), "100ms"),
        (Duration::from_millis(1500), "1500ms"),
        (Duration::from_secs(10), "10s"),
        (Duration::from_secs(90), "90s"),
        (Duration::from_secs(120), "2m"),
        (Duration::from_secs(7200), "2h"),
        (Duration::ZERO, "0s"),
    ] {
        assert_eq!(duration_text::format(duration), text);
        assert_eq!(duration_text::parse(text), Ok(duration));
    }
}

#[test]
fn restart_policies_parse() {
    assert_eq!(
        "on-failure".parse::<RestartPolicy>(),
        Ok(RestartPolicy::OnFailure)
    );
    assert_eq!(RestartPolicy::OnFailure.to_string(), "on-failure");
    assert!("On-Failure".parse::<RestartPolicy>().is_err());
}

#[test]
fn a_huge_name_is_refused_without_being_echoed_whole() {
    let name = "n".repeat(10_000);
    let err = ServiceSpec::new(name, "true").validate().unwrap_err();
    let text = err.to_string();
    assert!(text.len() < 200, "{} bytes", text.len());
    assert!(text.contains("(10000 bytes)"), "{text}");
    assert!(text.contains("at most 63 characters"), "{text}");
}

#[test]
fn each_bound_names_its_limit() {
    let mut spec = ServiceSpec::new("big", "true");
    spec.args = vec!["x".repeat(1_900_000)];
    assert_eq!(
        spec.validate().unwrap_err().to_string(),
        "service `big`: args item 1 is too large: 1900000 bytes, the limit is 8192"
    );
    spec.args = Vec::new();
    spec.ports = (0..=MAX_PORTS)
        .map(|i| PortSpec {
            name: Some(format!("p{i}")),
            ..PortSpec::auto()
        })
        .collect();
    assert_eq!(
        spec.validate().unwrap_err().to_string(),
        "service `big`: ports is too large: 33 ports, the limit is 32"
    );
    spec.ports = Vec::new();
    spec.args = vec!["x".to_string(); MAX_ARGS + 1];
    assert!(
        spec.validate()
            .unwrap_err()
            .to_string()
            .contains("the limit is 256")
    );
    // Within every per-field bound, over the whole-spec bound.
    spec.args = vec!["x".repeat(MAX_ARG_BYTES); 9];
    assert!(
        spec.validate()
            .unwrap_err()
            .to_string()
            .contains("as JSON, the limit is 65536")
    );
    spec.args.clear();
    spec.command = "/".repeat(MAX_PATH_BYTES + 1);
    assert!(
        spec.validate()
            .unwrap_err()
            .to_string()
            .contains("command is too large")
    );
    spec.command = "true".to_string();
    spec.env = (0..=MAX_ENV_VARS)
        .map(|i| (format!("V{i}"), String::new()))
        .collect();
    assert!(
        spec.validate()
            .unwrap_err()
            .to_string()
            .contains("the limit is 128")
    );
    spec.env.clear();
    spec.health = Some(HealthSpec::new(HealthCheck::Exec {
        command: vec!["y".repeat(MAX_ARG_BYTES + 1)],
    }));
    assert!(
        spec.validate()
            .unwrap_err()
            .to_string()
            .contains("health command item 1 is too large")
    );
}

#[test]
fn user_and_group_are_checked_for_form_only() {
    let mut spec = ServiceSpec::new("svc", "true");
    spec.user = Some("nobody".to_string());
    spec.group = Some("65534".to_string());
    assert!(
        spec.validate().is_ok(),
        "existence is the running node's question"
    );
    spec.user = Some("-rf".to_string());
    assert!(
        spec.validate()
            .unwrap_err()
            .to_string()
            .contains("bad user `-rf`")
    );
    spec.user = Some("a".repeat(33));
    assert!(
        spec.validate()
            .unwrap_err()
            .to_string()
            .contains("at most 32")
    );
    spec.user = Some("ok$".to_string());
    spec.group = Some("bad group".to_string());
    assert!(
        spec.validate()
            .unwrap_err()
            .to_string()
            .contains("bad group")
    );
    // The CLI form carries them.
    let spec = ServiceSpec::from_cli_parts(CliServiceParts {
        name: "svc".to_string(),
        user: Some("nobody".to_string()),
        group: Some("nogroup".to_string()),
        command: vec!["true".to_string()],
        ..CliServiceParts::default()
    })
    .unwrap();
    assert_eq!(
        (spec.user.as_deref(), spec.group.as_deref()),
        (Some("nobody"), Some("nogroup"))
    );
}

#[test]
fn placement_keys_sit_at_the_top_level_of_a_service_and_typos_are_still_refused() {
    let text = "[[service]]\nname = \"web\"\ncommand = \"x\"\nreplicas = 2\nsticky = false\n\
                nodes = [\"pi-1\", \"pi-2\"]\n[service.require]\narch = \"aarch64\"\n\
                min_memory_mb = 512\ntags = { room = \"kitchen\" }\n";
    let specs = parse_service_file(text).expect("parses");
    let placement = &specs[0].placement;
    assert_eq!(placement.replicas, 2);
    assert!(!placement.sticky);
    assert_eq!(placement.nodes, ["pi-1", "pi-2"]);
    assert_eq!(placement.require.arch.as_deref(), Some("aarch64"));
    assert_eq!(placement.require.tags["room"], "kitchen");
    // Defaults are not written out, so specs without placement keep their JSON text.
    let plain = ServiceSpec::new("a", "x");
    let json = serde_json::to_string(&plain).expect("json");
    assert!(
        !json.contains("replicas") && !json.contains("sticky"),
        "{json}"
    );
    for (text, needle) in [
        (
            "[[service]]\nname = \"a\"\ncommand = \"x\"\nreplica = 2\n",
            "unknown field `replica`",
        ),
        (
            "[[service]]\nname = \"a\"\ncommand = \"x\"\nreplicas = 0\n",
            "replicas must be between 1 and 64",
        ),
        (
            "[[service]]\nname = \"a\"\ncommand = \"x\"\nreplicas = 2\nexclusive = true\n",
            "an exclusive service runs one copy",
        ),
        (
            "[[service]]\nname = \"a\"\ncommand = \"x\"\n[service.require]\ncpu = \"fast\"\n",
            "unknown field `cpu`",
        ),
    ] {
        let err = parse_service_file(text).expect_err(needle).to_string();
        assert!(err.contains(needle), "{err} should contain {needle}");
    }
}

#[test]
fn placement_flags_on_the_command_line() {
    let spec = ServiceSpec::from_cli_parts(CliServiceParts {
        name: "cam".into(),
        command: vec!["motion".into()],
        replicas: Some(2),
        not_sticky: true,
        nodes: vec!["pi-1".into(), "pi-2".into()],
        require: vec![
            "tag.room=kitchen".into(),
            "arch=aarch64".into(),
            "min_memory_mb=512".into(),
        ],
        ..Default::default()
    })
    .expect("valid");
    assert_eq!(spec.placement.replicas, 2);
    assert!(!spec.placement.sticky);
    assert_eq!(spec.placement.require.tags["room"], "kitchen");
    assert_eq!(spec.placement.require.arch.as_deref(), Some("aarch64"));
    assert_eq!(spec.placement.require.min_memory_mb, Some(512));
    let err = ServiceSpec::from_cli_parts(CliServiceParts {
        name: "cam".into(),
        command: vec!["motion".into()],
        require: vec!["cpu=fast".into()],
        ..Default::default()
    })
    .expect_err("unknown key")
    .to_string();
    assert!(err.contains("unknown key"), "{err}");
}

#[test]
fn advertise_takes_a_dns_sd_type_matching_the_first_port() {
    for good in [
        "_http._tcp",
        "_ipp._tcp",
        "_x-1._udp",
        "_a1b2c3d4e5f6g7h._tcp",
        "_HTTP._tcp",
    ] {
        assert!(check_service_type(good).is_ok(), "{good} is a service type");
    }
    assert_eq!(check_service_type("_http._tcp"), Ok(Proto::Tcp));
    assert_eq!(check_service_type("_sip._udp"), Ok(Proto::Udp));
    for bad in [
        "",
        "http",
        "_http",
        "http._tcp",
        "_http._sctp",
        "_http._tcp.local.",
        "_._tcp",
        "_-http._tcp",
        "_http-._tcp",
        "_ht--tp._tcp",
        "_1234._tcp",
        "_a1b2c3d4e5f6g7h8._tcp",
        "_ht tp._tcp",
        "_ht.tp._tcp",
    ] {
        assert!(check_service_type(bad).is_err(), "{bad:?} is refused");
    }

    let toml = r#"
[[service]]
name = "web"
command = "python3"
args = ["-m", "http.server", "$PORT"]
ports = [{}]
advertise = "_http._tcp"
"#;
    let specs = parse_service_file(toml).expect("valid");
    assert_eq!(specs[0].advertise.as_deref(), Some("_http._tcp"));
    // JSON (the document's form) carries it under the same key, and omits it when absent.
    let json = serde_json::to_value(&specs[0]).expect("serialises");
    assert_eq!(json["advertise"], "_http._tcp");
    let plain = serde_json::to_value(ServiceSpec::new("a", "true")).expect("serialises");
    assert!(plain.get("advertise").is_none(), "{plain}");

    let mut spec = specs[0].clone();
    spec.advertise = Some("_http".to_string());
    let err = spec.validate().unwrap_err().to_string();
    assert!(
        err.contains("bad advertise `_http`") && err.contains("_<name>._tcp"),
        "{err}"
    );
    spec.advertise = Some("_dns._udp".to_string());
    let err = spec.validate().unwrap_err().to_string();
    assert!(
        err.contains("the first port ($PORT, the one advertised) is tcp"),
        "{err}"
    );
    spec.ports.clear();
    spec.args.clear();
    spec.advertise = Some("_http._tcp".to_string());
    let err = spec.validate().unwrap_err().to_string();
    assert!(err.contains("declares no ports"), "{err}");

    // The CLI form carries it.
    let spec = ServiceSpec::from_cli_parts(CliServiceParts {
        ports: vec!["auto".to_string()],
        advertise: Some("_http._tcp".to_string()),
        ..cli("web", &["python3", "-m", "http.server", "$PORT"])
    })
    .expect("valid");
    assert_eq!(spec.advertise.as_deref(), Some("_http._tcp"));
    let err = ServiceSpec::from_cli_parts(CliServiceParts {
        advertise: Some("_http._tcp".to_string()),
        ..cli("web", &["true"])
    })
    .unwrap_err();
    assert!(matches!(err, SpecError::BadAdvertise { .. }), "{err}");
}
