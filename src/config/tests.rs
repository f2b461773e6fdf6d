//! Unit tests of configuration: precedence, provenance, the typed sections and their checks.

use super::*;

fn write(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("kfr.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn unknown_key_names_key_file_and_suggestion() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "env = \"test\"\nscopes = \"x\"\n");
    let err = Settings::load_from(Some(&p), &BTreeMap::new(), &FlagOverrides::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("`scopes`") && msg.contains("kfr.toml"), "{msg}");
    assert_eq!(err.hint().unwrap(), "did you mean `scope`? See docs/configuration.md");
}

#[test]
fn precedence_default_file_env_flag() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "env = \"test\"\norg_number = \"916960190\"\nclient_id = \"from-file\"\n",
    );
    let mut env = BTreeMap::new();
    env.insert("KFR_CLIENT_ID".to_string(), "from-env".to_string());
    env.insert("KFR_SCOPE".to_string(), "a:b".to_string());
    let flags = FlagOverrides {
        scope: Some("c:d".into()),
        ..Default::default()
    };
    let s = Settings::load_from(Some(&p), &env, &flags).unwrap();
    assert_eq!(s.client_id.as_deref(), Some("from-env"));
    assert_eq!(s.scope, "c:d");
    assert_eq!(s.origins["scope"].1, Source::Flag("--scope".into()));
    assert_eq!(s.origins["org_number"].1, Source::File(p.clone()));
    assert_eq!(s.origins["x5c"].1, Source::Default);
    assert_eq!(s.maskinporten_issuer.as_str(), "https://test.maskinporten.no/");
    assert_eq!(s.kfr_base_url.as_str(), "https://preprod.api.bits.no/kar-ws/api/v1");
    assert!(s.allow_synthetic_ids);
}

#[test]
fn http_refused_outside_local() {
    let flags = FlagOverrides {
        env: Some("prod".into()),
        kfr_base_url: Some("http://kfr.example/".into()),
        ..Default::default()
    };
    let err = Settings::load_from(None, &BTreeMap::new(), &flags).unwrap_err();
    assert!(
        err.to_string().contains("http:// is refused with env = \"prod\""),
        "{err}"
    );
    let flags = FlagOverrides {
        env: Some("local".into()),
        ..Default::default()
    };
    let s = Settings::load_from(None, &BTreeMap::new(), &flags).unwrap();
    assert_eq!(s.maskinporten_issuer.as_str(), "http://127.0.0.1:8080/maskinporten/");
    assert!(
        !Settings::load_from(
            None,
            &BTreeMap::new(),
            &FlagOverrides {
                env: Some("prod".into()),
                ..Default::default()
            }
        )
        .unwrap()
        .allow_synthetic_ids
    );
}

#[test]
fn relative_paths_resolve_against_the_config_file() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("pw"), "s3cret\n").unwrap();
    let p = write(
        d.path(),
        "certificate = \"client.p12\"\ncertificate_password_file = \"pw\"\n",
    );
    let s = Settings::load_from(Some(&p), &BTreeMap::new(), &FlagOverrides::default()).unwrap();
    match s.credential.unwrap() {
        CredentialSource::Pkcs12 { path, password } => {
            assert_eq!(path, d.path().join("client.p12"));
            assert_eq!(secrecy::ExposeSecret::expose_secret(&password.unwrap()), "s3cret");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.origins["certificate_password"].0, "[redacted]");
}

#[test]
fn password_from_env_and_file_conflict() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("pw"), "x").unwrap();
    let p = write(d.path(), "certificate_password_file = \"pw\"\n");
    let mut env = BTreeMap::new();
    env.insert("KFR_CERTIFICATE_PASSWORD".into(), "y".into());
    let err = Settings::load_from(Some(&p), &env, &FlagOverrides::default()).unwrap_err();
    assert!(err.to_string().contains("keep only one"));
}

#[test]
fn issuer_gets_its_trailing_slash() {
    let flags = FlagOverrides {
        env: Some("local".into()),
        maskinporten_issuer: Some("http://127.0.0.1:9/maskinporten".into()),
        ..Default::default()
    };
    let s = Settings::load_from(None, &BTreeMap::new(), &flags).unwrap();
    assert_eq!(s.maskinporten_issuer.as_str(), "http://127.0.0.1:9/maskinporten/");
}

fn load(text: &str) -> Result<Settings, ConfigError> {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), text);
    Settings::load_from(Some(&p), &BTreeMap::new(), &FlagOverrides::default())
}

#[test]
fn sync_table_and_sources_parse_with_their_sources_shown() {
    let s = load(
        "env = \"local\"\n[sync]\nlisten = \"127.0.0.1:18090\"\nrate = 25\n\
         [[sync.sources]]\nkind = \"http\"\n[[sync.sources]]\nkind = \"spool\"\ndir = \"spool\"\nname = \"core\"\n\
         [retry]\nretry_after_cap_secs = 600\n[store]\nurl = \"sqlite:///var/lib/kfr/state.db\"\n",
    )
    .unwrap();
    assert_eq!(s.sync.listen.to_string(), "127.0.0.1:18090");
    assert_eq!(s.sync.rate, 25);
    assert_eq!(s.sync.max_in_flight, 8, "defaults fill what the table leaves out");
    assert_eq!(s.sync.sources.len(), 2);
    assert_eq!(s.sync.sources[0].kind, SourceKind::Http);
    assert_eq!(s.sync.sources[1].name, "core");
    match &s.sync.sources[1].kind {
        SourceKind::Spool { dir } => assert!(dir.is_absolute() && dir.ends_with("spool"), "{dir:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.retry.retry_after_cap, std::time::Duration::from_secs(600));
    assert_eq!(s.state, Ok(PathBuf::from("/var/lib/kfr/state.db")));
    assert!(matches!(s.origins["sync.rate"].1, Source::File(_)));
    assert_eq!(s.origins["sync.max_in_flight"].1, Source::Default);
    assert_eq!(s.origins["sync.sources[1].kind"].0, "spool");
}

#[test]
fn a_misspelt_key_inside_a_table_is_refused_with_a_suggestion() {
    let err = load("[sync]\nlisen = \"127.0.0.1:1\"\n").unwrap_err();
    assert!(err.to_string().contains("`sync.lisen`"), "{err}");
    assert_eq!(
        err.hint().unwrap(),
        "did you mean `sync.listen`? See docs/configuration.md"
    );
    let err = load("[[sync.sources]]\nkind = \"spool\"\ndri = \"x\"\n").unwrap_err();
    assert!(err.hint().unwrap().contains("`sync.sources[].dir`"), "{:?}", err.hint());
    let err = load("[synk]\nrate = 1\n").unwrap_err();
    assert!(err.hint().unwrap().contains("`sync`"), "{:?}", err.hint());
    // A table where a value belongs, and a value where a table belongs, are refused too.
    assert!(load("[scope]\nx = 1\n").is_err());
    assert!(load("sync = 3\n").is_err());
}

#[test]
fn section_keys_come_from_the_environment_too() {
    assert_eq!(env_var("retry.max_attempts").as_deref(), Some("KFR_RETRY_MAX_ATTEMPTS"));
    assert_eq!(env_var("sync.sources[].kind"), None);
    let mut env = BTreeMap::new();
    env.insert("KFR_SYNC_RATE".to_string(), "3".to_string());
    let s = Settings::load_from(None, &env, &FlagOverrides::default()).unwrap();
    assert_eq!(s.sync.rate, 3);
    assert_eq!(s.origins["sync.rate"].1, Source::Env("KFR_SYNC_RATE".into()));
}

#[test]
fn bad_section_values_name_key_and_rule() {
    let err = load("[[sync.sources]]\nkind = \"kafka\"\n").unwrap_err();
    assert!(
        err.to_string().contains("expected http, spool, stdin or pg_outbox"),
        "{err}"
    );
    let err = load("[[sync.sources]]\nkind = \"spool\"\n").unwrap_err();
    assert!(err.to_string().contains("sync.sources[].dir"), "{err}");
    let err = load("[store]\nurl = \"mysql://db/kfr\"\n").unwrap_err();
    assert!(err.to_string().contains("postgres://user@host:port/database"), "{err}");
    let err = load("[store]\nurl = \"postgres://kfr:hunter2@db/kfr\"\n").unwrap_err();
    assert!(
        err.to_string().contains("password") && !err.to_string().contains("hunter2"),
        "{err}"
    );
    let err = load("[store]\nurl = \"postgres://kfr@db\"\n").unwrap_err();
    assert!(err.to_string().contains("names no database"), "{err}");
    let err = load("[store]\npassword_file = \"pw\"\n").unwrap_err();
    assert!(err.to_string().contains("only a postgres:// store.url"), "{err}");
    let s = load("[store]\nurl = \"postgres://kfr@db.bank:5432/kfr\"\npassword_file = \"/etc/kfr/db.pw\"\n").unwrap();
    let pg = s.postgres.expect("a PostgreSQL store");
    assert_eq!(pg.url, "postgres://kfr@db.bank:5432/kfr");
    assert_eq!(pg.password_file.as_deref(), Some(Path::new("/etc/kfr/db.pw")));
    let err = load("[[sync.sources]]\nkind = \"pg_outbox\"\nurl = \"postgres://core@db/core\"\n").unwrap_err();
    assert!(err.to_string().contains("sync.sources[].table"), "{err}");
    let err = load("[[sync.sources]]\nkind = \"pg_outbox\"\nurl = \"postgres://core@db/core\"\ntable = \"x; drop\"\n")
        .unwrap_err();
    assert!(err.to_string().contains("lower-case letters"), "{err}");
    let err = load("[[sync.sources]]\nkind = \"http\"\ntable = \"kfr_outbox\"\n").unwrap_err();
    assert!(err.to_string().contains("only a pg_outbox source"), "{err}");
    let s = load(
        "[[sync.sources]]\nkind = \"pg_outbox\"\nurl = \"postgres://core@db/core\"\ntable = \"core.kfr_outbox\"\n",
    )
    .unwrap();
    assert!(matches!(&s.sync.sources[0].kind, SourceKind::PgOutbox { table, .. } if table == "core.kfr_outbox"));
    let err = load("state_file = \"a.db\"\n[store]\nurl = \"b.db\"\n").unwrap_err();
    assert!(err.to_string().contains("keep only `state`"), "{err}");
    let err = load("[retry]\nmax_attempts = 0\n").unwrap_err();
    assert!(err.to_string().contains("from 1 to 100"), "{err}");
    let err = load("[sync]\nlisten = \"localhost\"\n").unwrap_err();
    assert!(err.to_string().contains("127.0.0.1:8090"), "{err}");
}

#[test]
fn the_state_store_defaults_to_the_state_home_and_is_never_silently_the_working_directory() {
    let env = |vars: &[(&str, &str)]| -> BTreeMap<String, String> {
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let f = FlagOverrides::default();
    let s = Settings::load_from(None, &env(&[("KFR_STATE_HOME", "/srv/kfr")]), &f).unwrap();
    assert_eq!(s.require_state(None).unwrap(), PathBuf::from("/srv/kfr/kfr-state.db"));
    let s = Settings::load_from(None, &env(&[("XDG_STATE_HOME", "/x")]), &f).unwrap();
    assert_eq!(s.require_state(None).unwrap(), PathBuf::from("/x/kfr/kfr-state.db"));
    let s = Settings::load_from(None, &env(&[("HOME", "/home/o")]), &f).unwrap();
    assert_eq!(
        s.require_state(None).unwrap(),
        PathBuf::from("/home/o/.local/state/kfr/kfr-state.db")
    );
    // No state home: only commands that need the store fail, naming the variables.
    let s = Settings::load_from(None, &env(&[]), &f).unwrap();
    let err = s.require_state(None).unwrap_err();
    assert!(
        err.to_string().contains("KFR_STATE_HOME") && err.to_string().contains("HOME"),
        "{err}"
    );
    assert!(err.hint().unwrap().contains("`state`"), "{:?}", err.hint());
    assert_eq!(err.exit(), crate::error::Exit::Usage);
    // A flag wins; `state` from the environment wins over the state home.
    assert_eq!(s.require_state(Some(Path::new("a.db"))).unwrap(), PathBuf::from("a.db"));
    let s = Settings::load_from(None, &env(&[("KFR_STATE", "/k.db"), ("HOME", "/h")]), &f).unwrap();
    assert_eq!(s.require_state(None).unwrap(), PathBuf::from("/k.db"));
    assert_eq!(s.origins["state"].1, Source::Env("KFR_STATE".into()));
}

/// `--config` > `KFR_CONFIG` > the installation's file (when it exists) > none here (the
/// working directory's `./kfr.toml` is tested end to end: it depends on the process's cwd).
#[test]
fn the_configuration_file_is_found_in_precedence_order() {
    let d = tempfile::tempdir().unwrap();
    let system = write(d.path(), "env = \"test\"\n");
    let mut env = BTreeMap::new();
    env.insert(env_vars::KFR_SYSTEM_CONFIG.to_string(), system.display().to_string());
    assert_eq!(
        find_config_file(None, &env),
        Some((system.clone(), ConfigOrigin::System))
    );
    env.insert(env_vars::KFR_CONFIG.to_string(), "/k.toml".to_string());
    assert_eq!(
        find_config_file(None, &env),
        Some((PathBuf::from("/k.toml"), ConfigOrigin::Env))
    );
    assert_eq!(
        find_config_file(Some(Path::new("f.toml")), &env),
        Some((PathBuf::from("f.toml"), ConfigOrigin::Flag))
    );
    // An empty KFR_CONFIG is unset; a missing system file is no system file; an empty
    // KFR_SYSTEM_CONFIG means there is none.
    env.insert(env_vars::KFR_CONFIG.to_string(), String::new());
    assert_eq!(find_config_file(None, &env).map(|f| f.1), Some(ConfigOrigin::System));
    env.insert(
        env_vars::KFR_SYSTEM_CONFIG.to_string(),
        d.path().join("absent.toml").display().to_string(),
    );
    assert_ne!(find_config_file(None, &env).map(|f| f.1), Some(ConfigOrigin::System));
    env.insert(env_vars::KFR_SYSTEM_CONFIG.to_string(), String::new());
    assert_eq!(system_config_path(&env), None);
    assert_eq!(system_config_path(&BTreeMap::new()), Some(PathBuf::from(SYSTEM_CONFIG)));

    // Settings::load_from reads the system file and says so.
    let system = write(d.path(), "state = \"/var/lib/kfr/kfr-state.db\"\n");
    let env = BTreeMap::from([(env_vars::KFR_SYSTEM_CONFIG.to_string(), system.display().to_string())]);
    let s = Settings::load_from(None, &env, &FlagOverrides::default()).unwrap();
    assert_eq!(s.config_file, Some(system));
    assert_eq!(s.config_origin, Some(ConfigOrigin::System));
    assert_eq!(
        s.require_state(None).unwrap(),
        PathBuf::from("/var/lib/kfr/kfr-state.db")
    );
}

/// A store key in the environment replaces the file's, whatever the spellings (the old unit's
/// `KFR_STORE_URL` with the example's `state` exited 2); `config show` shows only the one in
/// effect; a flag-level `--state` is handled by the commands.
#[test]
fn a_store_key_from_the_environment_replaces_the_files() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "state = \"/file.db\"\n");
    let env = BTreeMap::from([("KFR_STORE_URL".to_string(), "sqlite:///env.db".to_string())]);
    let s = Settings::load_from(Some(&p), &env, &FlagOverrides::default()).unwrap();
    assert_eq!(s.state, Ok(PathBuf::from("/env.db")));
    assert!(!s.origins.contains_key("state"), "{:?}", s.origins);
    assert_eq!(s.origins["store.url"].1, Source::Env("KFR_STORE_URL".into()));
    let env = BTreeMap::from([
        ("KFR_STORE_URL".to_string(), "/a.db".to_string()),
        ("KFR_STATE".to_string(), "/b.db".to_string()),
    ]);
    let err = Settings::load_from(Some(&p), &env, &FlagOverrides::default()).unwrap_err();
    assert!(err.to_string().contains("keep only `state`"), "{err}");
}

#[test]
fn state_and_its_aliases_are_one_key() {
    let s = load("state = \"st/kfr.db\"\n").unwrap();
    let p = s.state.unwrap();
    assert!(
        p.is_absolute() && p.ends_with("st/kfr.db"),
        "relative to the file: {p:?}"
    );
    let s = load("state_file = \"/old.db\"\n").unwrap();
    assert_eq!(s.state, Ok(PathBuf::from("/old.db")));
    for two in [
        "state = \"a.db\"\nstate_file = \"b.db\"\n",
        "state = \"a.db\"\n[store]\nurl = \"b.db\"\n",
    ] {
        let err = load(two).unwrap_err();
        assert!(err.to_string().contains("keep only `state`"), "{err}");
        assert_eq!(err.exit(), crate::error::Exit::Usage);
    }
}

#[test]
fn organisation_numbers_are_checked_mod_11() {
    assert!(load("org_number = \"916960190\"\n").is_ok());
    let err = load("org_number = \"916960191\"\n").unwrap_err();
    assert!(err.to_string().contains("check digit"), "{err}");
    let err = load("org_number = \"916960190\"\nconsumer_org = \"916960199\"\n").unwrap_err();
    assert!(err.to_string().contains("consumer_org"), "{err}");
    let err = load("org_number = \"916960190\"\nconsumer_org = \"916960190\"\n").unwrap_err();
    assert!(err.to_string().contains("own org_number"), "{err}");
    // A person's number is not an organisation number, whatever its length checks say.
    let err = load("org_number = \"15108695088\"\n").unwrap_err();
    assert!(err.to_string().contains("org_number"), "{err}");
    assert!(
        !err.to_string().contains("15108695088"),
        "a person's number is masked: {err}"
    );
}

/// A key the schema refuses is named with its file and line, whichever table it is in.
#[test]
fn schema_errors_name_the_line() {
    let err = load("env = \"test\"\n\n[sync]\nrate = 3\nlisen = \"x\"\n").unwrap_err();
    assert!(err.to_string().ends_with("kfr.toml:5"), "{err}");
    let err =
        load("env = \"test\"\n[[sync.sources]]\nkind = \"http\"\n[[sync.sources]]\nknd = \"http\"\n").unwrap_err();
    assert!(
        err.to_string().contains("`sync.sources[1].knd`") && err.to_string().ends_with(":5"),
        "{err}"
    );
    assert!(
        err.hint().unwrap().contains("`sync.sources[].kind`"),
        "{:?}",
        err.hint()
    );
    let err = load("env = \"test\"\n[sync]\nrate = \"fast\"\n").unwrap_err();
    assert_eq!(
        err.to_string().split_once(" in ").map(|(k, _)| k),
        Some("`sync.rate`"),
        "{err}"
    );
    assert!(
        err.to_string().contains("kfr.toml:3") && err.to_string().contains("expected a whole number"),
        "{err}"
    );
    let err = load("sync = 3\n").unwrap_err();
    assert!(err.to_string().contains("expected a table"), "{err}");
}

/// A variable of the wrong type names the key, the variable and its value.
#[test]
fn a_variable_of_the_wrong_type_names_its_source() {
    let env = BTreeMap::from([("KFR_SYNC_RATE".to_string(), "fast".to_string())]);
    let err = Settings::load_from(None, &env, &FlagOverrides::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "`sync.rate` (env KFR_SYNC_RATE) has an invalid value \"fast\": expected a whole number"
    );
    let env = BTreeMap::from([("KFR_SYNC_RATE".to_string(), "0".to_string())]);
    let err = Settings::load_from(None, &env, &FlagOverrides::default()).unwrap_err();
    assert!(err.to_string().contains("from 1 to 10000"), "{err}");
}
