use super::*;

#[test]
fn a_full_file_parses_and_unknown_fields_are_rejected() {
    let text = r#"
        version = 1
        [edge]
        listen = "127.0.0.1:9999"
        ledger = ["127.0.0.1:7001", "127.0.0.1:7002"]
        estimate = "strict"
        max_body_bytes = 1000
        [upstream.anthropic]
        url = "http://127.0.0.1:5000/"
        [pricing.fallback]
        input = 1
        output = 2
        [pricing.models."my-model"]
        input = 10
        output = 20
        cache_read = 3
    "#;
    let f = FileConfig::parse(text).unwrap();
    let s = EdgeSettings::resolve(&f, &Overrides::default(), None).unwrap();
    assert_eq!(s.listen.port(), 9999);
    assert_eq!(s.ledger, vec!["127.0.0.1:7001", "127.0.0.1:7002"]);
    assert_eq!(s.estimate, EstimateMode::Strict);
    assert_eq!(s.max_body_bytes, 1000);
    assert_eq!(s.anthropic.url, "http://127.0.0.1:5000");
    assert_eq!(s.openai.url, "https://api.openai.com");
    // Exact ids only: `my-model-v2` is not `my-model`.
    assert!(s.prices.lookup("my-model-v2").is_none());
    let p = s.prices.lookup("my-model").unwrap();
    let nano = crate::pricing::Rate::from_nano_per_token;
    assert_eq!(
        (p.rates.input, p.rates.output, p.rates.cache_read, p.rates.cache_write_5m),
        (nano(10), nano(20), nano(3), nano(12))
    );
    // A [pricing.fallback] prices unknown models.
    let unknown = s.prices.resolve("nobody-knows", crate::pricing::Provider::Anthropic).unwrap();
    assert_eq!(unknown.rates.output, nano(2));

    let err = FileConfig::parse("version = 1\n[edge]\nlisten_addr = \"x\"\n").unwrap_err();
    assert!(err.contains("listen_addr"), "{err}");
    let err = FileConfig::parse("version = 2\n").unwrap_err();
    assert!(err.contains("version 2"), "{err}");
    let err = FileConfig::parse("[edge]\n").unwrap_err();
    assert!(err.contains("version"), "{err}");
}

#[test]
fn flags_override_the_file_and_bad_values_are_named() {
    let f = FileConfig::parse("version = 1\n[edge]\nledger = [\"localhost:1\"]\n").unwrap();
    let flags = Overrides {
        ledger: Some(vec!["127.0.0.2:2".into()]),
        estimate: Some(EstimateMode::Strict),
        ..Default::default()
    };
    let s = EdgeSettings::resolve(&f, &flags, None).unwrap();
    assert_eq!(s.ledger, vec!["127.0.0.2:2"]);
    assert_eq!(s.estimate, EstimateMode::Strict);
    let flags = Overrides { upstream_openai: Some("ftp://x".into()), ..Default::default() };
    let err = EdgeSettings::resolve(&f, &flags, None).unwrap_err();
    assert!(err.contains("http://"), "{err}");
    let err = FileConfig::parse("version = 1\n[edge]\nfail_mode = \"sideways\"\n").unwrap_err();
    assert!(err.contains("sideways") || err.contains("fail_mode"), "{err}");
    // fail_mode open with its allowance in exact dollars; the default is $10.
    let f = FileConfig::parse(
        "version = 1\n[edge]\nledger = [\"localhost:1\"]\nfail_mode = \"open\"\nfail_open_allowance_usd = \"2.5\"\n",
    )
    .unwrap();
    let s = EdgeSettings::resolve(&f, &Overrides::default(), None).unwrap();
    assert_eq!((s.fail_mode, s.fail_open_allowance), (FailMode::Open, NanoUsd(2_500_000_000)));
    let f = FileConfig::parse("version = 1\n[edge]\nledger = [\"localhost:1\"]\n").unwrap();
    let s = EdgeSettings::resolve(&f, &Overrides::default(), None).unwrap();
    assert_eq!((s.fail_mode, s.fail_open_allowance), (FailMode::Closed, NanoUsd(10_000_000_000)));
    let f = FileConfig::parse("version = 1\n[edge]\nledger = [\"localhost:1\"]\nfail_open_allowance_usd = \"-1\"\n")
        .unwrap();
    let err = EdgeSettings::resolve(&f, &Overrides::default(), None).unwrap_err();
    assert!(err.contains("fail_open_allowance_usd"), "{err}");
    let empty = FileConfig { version: 1, ..Default::default() };
    let err = EdgeSettings::resolve(&empty, &Overrides::default(), None).unwrap_err();
    assert!(err.contains("ledger"), "{err}");
    // The environment's spelling is the file's (serde's names, once).
    assert_eq!(EstimateMode::parse("strict"), Ok(EstimateMode::Strict));
    assert_eq!(FailMode::parse("open"), Ok(FailMode::Open));
    assert_eq!(FailMode::parse("Open"), Err("fail_mode must be closed or open, not \"Open\"".to_string()));
}

#[test]
fn unknown_models_are_denied_by_default_or_priced_at_the_dearest_or_the_fallback() {
    use crate::pricing::{Provider, UnknownModel};
    let resolve = |text: &str| EdgeSettings::resolve(&FileConfig::parse(text).unwrap(), &Overrides::default(), None);
    let base = "version = 1\n[edge]\nledger = [\"localhost:1\"]\n";
    assert_eq!(resolve(base).unwrap().prices.unknown(), &UnknownModel::Deny);
    let s = resolve(&format!("{base}[pricing]\nunknown_model = \"dearest\"\n")).unwrap();
    assert!(s.prices.resolve("new-model", Provider::OpenAi).is_ok());
    let err = resolve(&format!("{base}[pricing]\nunknown_model = \"cheapest\"\n")).unwrap_err();
    assert!(err.contains("deny or dearest"), "{err}");
    let err = resolve(&format!("{base}[pricing.models.\"a b\"]\ninput = 1\noutput = 2\n")).unwrap_err();
    assert!(err.contains("not a valid model id"), "{err}");
}

#[test]
fn a_ledger_off_this_machine_needs_tls_or_an_explicit_insecure_flag() {
    let f = FileConfig::parse("version = 1\n[edge]\nledger = [\"10.0.0.1:7070\", \"127.0.0.1:7070\"]\n").unwrap();
    let err = EdgeSettings::resolve(&f, &Overrides::default(), None).unwrap_err();
    assert!(err.contains("10.0.0.1:7070 is not loopback") && err.contains("--tls-ca"), "{err}");
    let insecure = Overrides { insecure_plaintext: true, ..Default::default() };
    assert!(EdgeSettings::resolve(&f, &insecure, None).unwrap().cluster_tls.is_none());
    let files = TlsFiles { ca: "ca.pem".into(), cert: "e.pem".into(), key: "e.key".into() };
    let tls = Overrides { cluster_tls: Some(files.clone()), ..Default::default() };
    assert_eq!(EdgeSettings::resolve(&f, &tls, None).unwrap().cluster_tls, Some(files));
    // The file's [cluster_tls] needs all three; [tls] both.
    let f = FileConfig::parse(
        "version = 1\n[edge]\nledger = [\"10.0.0.1:7070\"]\n[cluster_tls]\nca = \"a\"\ncert = \"b\"\n",
    )
    .unwrap();
    assert!(EdgeSettings::resolve(&f, &Overrides::default(), None).unwrap_err().contains("all three"));
    for (addr, local) in [("127.0.0.1:1", true), ("localhost:1", true), ("[::1]:1", true), ("10.1.2.3:1", false)] {
        assert_eq!(is_loopback(addr), local, "{addr}");
    }
    assert!(!is_loopback("ledger-1.internal:7070"));
}
