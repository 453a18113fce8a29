//! Profiles and projects on real member processes, through the command line as an lxc user
//! types it: create, set several pairs, show and edit (a YAML round trip through a pipe),
//! devices with the root-disk rules, rename, copy, the default profile's protection, projects
//! with their own default profile, `--project` scoping, values read from stdin, and bad input.

use anyhow::{Context, Result};
use serde_json::Value;
use starling_tests::init_tracing;
use starling_tests::processes::ProcessCluster;
use tracing::info;

/// `args` with `--format json`, parsed.
fn json(cluster: &ProcessCluster, index: usize, args: &[&str]) -> Result<Value> {
    let mut args = args.to_vec();
    args.extend(["--format", "json"]);
    let out = cluster.cli_ok(index, &args)?;
    serde_json::from_str(&out).with_context(|| format!("{args:?} printed {out}"))
}

/// The names in a JSON listing.
fn names(listing: &Value) -> Vec<String> {
    listing
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["name"].as_str().map(str::to_string))
        .collect()
}

/// Asserts that a command fails with an error containing every one of `needles`.
fn refused(cluster: &ProcessCluster, args: &[&str], needles: &[&str]) -> Result<()> {
    let error = cluster.cli_fails(0, args)?;
    for needle in needles {
        assert!(
            error.contains(needle),
            "starling {args:?}: expected \"{needle}\" in: {error}"
        );
    }
    Ok(())
}

/// Goal: the profile commands behave as lxc's, and every profile write lands whichever member
/// the client talks to.
/// Method: two member processes; write through both; read back `--format json`; feed `profile
/// show` into `profile edit`; add, change and remove devices within the root-disk rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_from_the_command_line() -> Result<()> {
    init_tracing();
    let cluster = ProcessCluster::start(2).await?;

    info!("--- create, set several pairs (through a member that does not lead), show");
    cluster.cli_ok(
        0,
        &["profile", "create", "web", "--description", "web servers"],
    )?;
    cluster.cli_ok(
        1,
        &[
            "profile",
            "set",
            "web",
            "limits.cpu=2",
            "limits.memory=1GiB",
            "user.tier=front",
        ],
    )?;
    cluster.cli_ok(0, &["profile", "set", "web", "user.note", "a=b"])?;
    let web = json(&cluster, 0, &["profile", "show", "web"])?;
    assert_eq!(web["description"], "web servers");
    assert_eq!(web["project"], "default");
    assert_eq!(web["used_by"], serde_json::json!([]));
    assert_eq!(web["config"]["limits.cpu"], "2");
    assert_eq!(web["config"]["limits.memory"], "1GiB");
    assert_eq!(web["config"]["user.tier"], "front");
    assert_eq!(web["config"]["user.note"], "a=b");
    let yaml = cluster.cli_ok(0, &["profile", "show", "web"])?;
    assert!(yaml.contains("limits.memory: 1GiB"), "{yaml}");
    assert_eq!(
        cluster
            .cli_ok(0, &["profile", "get", "web", "user.tier"])?
            .trim(),
        "front"
    );
    cluster.cli_ok(0, &["profile", "unset", "web", "user.note"])?;
    let listing = json(&cluster, 1, &["profile", "list"])?;
    assert_eq!(names(&listing), ["default", "web"]);
    let table = cluster.cli_ok(0, &["profile", "list"])?;
    assert!(table.contains("| web "), "{table}");
    assert!(table.contains("USED BY"), "{table}");

    info!("--- devices: the root-disk rules");
    cluster.cli_ok(
        0,
        &[
            "profile",
            "device",
            "add",
            "web",
            "root",
            "disk",
            "path=/",
            "pool=default",
        ],
    )?;
    refused(
        &cluster,
        &[
            "profile",
            "device",
            "add",
            "web",
            "root2",
            "disk",
            "path=/",
            "pool=default",
        ],
        &["only one root disk"],
    )?;
    refused(
        &cluster,
        &["profile", "device", "add", "web", "r", "disk", "path=/"],
        &["needs \"pool\""],
    )?;
    refused(
        &cluster,
        &[
            "profile",
            "device",
            "add",
            "web",
            "r",
            "disk",
            "path=/",
            "pool=nope",
        ],
        &["storage pool \"nope\" not found"],
    )?;
    refused(
        &cluster,
        &["profile", "device", "add", "web", "x", "floppy"],
        &["unknown type \"floppy\""],
    )?;
    refused(
        &cluster,
        &["profile", "device", "add", "web", "root", "none"],
        &["already exists"],
    )?;
    cluster.cli_ok(
        0,
        &[
            "profile",
            "device",
            "add",
            "web",
            "data",
            "disk",
            "path=/data",
            "source=/srv",
        ],
    )?;
    cluster.cli_ok(
        0,
        &[
            "profile",
            "device",
            "add",
            "web",
            "eth0",
            "nic",
            "network=br0",
        ],
    )?;
    cluster.cli_ok(
        1,
        &["profile", "device", "set", "web", "root", "size=10GiB"],
    )?;
    refused(
        &cluster,
        &["profile", "device", "set", "web", "root", "size", "big"],
        &["invalid size \"big\""],
    )?;
    refused(
        &cluster,
        &["profile", "device", "set", "web", "nope", "size=1GiB"],
        &["device \"nope\" doesn't exist"],
    )?;
    assert_eq!(
        cluster
            .cli_ok(0, &["profile", "device", "get", "web", "root", "size"])?
            .trim(),
        "10GiB"
    );
    let devices = json(&cluster, 0, &["profile", "device", "list", "web"])?;
    assert_eq!(devices["root"]["pool"], "default");
    assert_eq!(devices["eth0"]["type"], "nic");
    let table = cluster.cli_ok(0, &["profile", "device", "list", "web"])?;
    assert!(
        table.contains("| data ") && table.contains("| disk "),
        "{table}"
    );
    cluster.cli_ok(0, &["profile", "device", "remove", "web", "data"])?;
    refused(
        &cluster,
        &["profile", "device", "remove", "web", "data"],
        &["doesn't exist"],
    )?;
    let shown = cluster.cli_ok(0, &["profile", "device", "show", "web"])?;
    assert!(
        shown.contains("eth0:") && !shown.contains("data:"),
        "{shown}"
    );

    info!("--- YAML round trip: profile show web | profile edit web2");
    cluster.cli_ok(0, &["profile", "create", "web2"])?;
    let yaml = cluster.cli_ok(0, &["profile", "show", "web"])?;
    cluster.cli_with_stdin(1, &["profile", "edit", "web2"], &yaml)?;
    let web = json(&cluster, 0, &["profile", "show", "web"])?;
    let web2 = json(&cluster, 0, &["profile", "show", "web2"])?;
    for field in ["description", "config", "devices"] {
        assert_eq!(web[field], web2[field], "{field} after the round trip");
    }
    assert_eq!(web2["name"], "web2");
    let error = cluster.cli_fails(0, &["profile", "edit", "web2"])?;
    assert!(error.contains("YAML mapping"), "{error}");

    info!("--- rename and copy; the default profile stays");
    cluster.cli_ok(0, &["profile", "rename", "web2", "web3"])?;
    cluster.cli_ok(0, &["profile", "copy", "web3", "web4"])?;
    assert_eq!(
        names(&json(&cluster, 0, &["profile", "list"])?),
        ["default", "web", "web3", "web4"]
    );
    refused(
        &cluster,
        &["profile", "rename", "web3", "web"],
        &["already exists"],
    )?;
    refused(
        &cluster,
        &["profile", "delete", "default"],
        &["default profile cannot be deleted"],
    )?;
    refused(
        &cluster,
        &["profile", "rename", "default", "x"],
        &["default profile cannot be renamed"],
    )?;
    cluster.cli_ok(0, &["profile", "delete", "web4"])?;
    refused(
        &cluster,
        &["profile", "show", "web4"],
        &["profile \"web4\" not found"],
    )?;

    info!("--- bad input: each error names what is wrong");
    refused(
        &cluster,
        &["profile", "set", "web", "limits.memory=lots"],
        &["limits.memory", "\"lots\""],
    )?;
    refused(
        &cluster,
        &["profile", "set", "web", "limits.cpu=3-1"],
        &["limits.cpu", "\"3-1\""],
    )?;
    refused(
        &cluster,
        &["profile", "set", "web", "limits.processes=0"],
        &["limits.processes", "positive integer"],
    )?;
    refused(
        &cluster,
        &["profile", "set", "web", "volatile.eth0.hwaddr=x"],
        &["cannot be set on a profile"],
    )?;
    refused(
        &cluster,
        &["profile", "set", "web", "bad key=1"],
        &["invalid configuration key"],
    )?;
    refused(
        &cluster,
        &["profile", "set", "web", "bogus.key=1"],
        &["unknown configuration key \"bogus.key\""],
    )?;
    refused(
        &cluster,
        &["profile", "set", "web", "user.a=1", "user.b"],
        &["not KEY=VALUE"],
    )?;
    refused(
        &cluster,
        &["profile", "create", "a_b"],
        &["invalid profile name"],
    )?;
    // A refused change changes nothing.
    let web = json(&cluster, 0, &["profile", "show", "web"])?;
    assert_eq!(web["config"]["limits.memory"], "1GiB");

    info!("--- Lua: the same operations as built-ins");
    let out = cluster.cli_ok(
        1,
        &[
            "exec",
            "profiles.set('web', 'user.lua', 42); \
             profiles.device_add('web', 'tty', {type='unix-char', path='/dev/ttyS0'}); \
             return profiles.get('web').config['user.lua']",
        ],
    )?;
    assert_eq!(out.trim(), "\"42\"");
    let error = cluster.cli_fails(0, &["exec", "profiles.get('web', {projet='x'})"])?;
    assert!(error.contains("unknown field \"projet\""), "{error}");
    Ok(())
}

/// Goal: projects are namespaces with their own default profile; `--project` scopes profile
/// commands; values can come from stdin, as an lxc user installs a scriptlet.
/// Method: one member process; create a project, the same profile name in two projects, then
/// rename and delete within the store's rules; pipe values into `config set` and `profile set`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_and_values_from_stdin() -> Result<()> {
    init_tracing();
    let cluster = ProcessCluster::start(1).await?;

    info!("--- a project comes with its own default profile");
    cluster.cli_ok(
        0,
        &[
            "project",
            "create",
            "dev",
            "--description",
            "development",
            "-c",
            "user.team=a",
        ],
    )?;
    let projects = json(&cluster, 0, &["project", "list"])?;
    assert_eq!(names(&projects), ["default", "dev"]);
    let dev = json(&cluster, 0, &["project", "show", "dev"])?;
    assert_eq!(dev["description"], "development");
    assert_eq!(dev["config"]["user.team"], "a");
    assert_eq!(
        dev["used_by"],
        serde_json::json!(["/1.0/profiles/default?project=dev"])
    );
    let profiles = json(&cluster, 0, &["profile", "list", "--project", "dev"])?;
    assert_eq!(names(&profiles), ["default"]);
    assert_eq!(profiles[0]["devices"]["root"]["pool"], "default");
    let csv = cluster.cli_ok(0, &["project", "list", "--format", "csv"])?;
    assert!(
        csv.lines()
            .any(|line| line.starts_with("dev,development,1")),
        "{csv}"
    );

    info!("--- the same profile name in two projects");
    cluster.cli_ok(0, &["profile", "create", "web"])?;
    cluster.cli_ok(0, &["--project", "dev", "profile", "create", "web"])?;
    cluster.cli_ok(0, &["profile", "set", "web", "user.where=default"])?;
    cluster.cli_ok(
        0,
        &[
            "profile",
            "set",
            "web",
            "user.where=dev",
            "--project",
            "dev",
        ],
    )?;
    let in_default = json(&cluster, 0, &["profile", "show", "web"])?;
    let in_dev = json(&cluster, 0, &["profile", "show", "web", "--project", "dev"])?;
    assert_eq!(in_default["config"]["user.where"], "default");
    assert_eq!(in_dev["config"]["user.where"], "dev");
    assert_eq!(in_dev["project"], "dev");
    cluster.cli_ok(
        0,
        &[
            "profile",
            "copy",
            "web",
            "web-copy",
            "--target-project",
            "dev",
        ],
    )?;
    let copied = json(
        &cluster,
        0,
        &["profile", "show", "web-copy", "--project", "dev"],
    )?;
    assert_eq!(copied["config"]["user.where"], "default");
    refused(
        &cluster,
        &["profile", "list", "--project", "nope"],
        &["project \"nope\" not found"],
    )?;

    info!("--- project set, edit, rename and delete within the rules");
    cluster.cli_ok(
        0,
        &[
            "project",
            "set",
            "dev",
            "limits.instances=5",
            "features.profiles=true",
        ],
    )?;
    refused(
        &cluster,
        &["project", "set", "dev", "limits.instances=many"],
        &["limits.instances", "\"many\""],
    )?;
    refused(
        &cluster,
        &["project", "set", "dev", "limits.memory=50%"],
        &["not a percentage"],
    )?;
    assert_eq!(
        cluster
            .cli_ok(0, &["project", "get", "dev", "limits.instances"])?
            .trim(),
        "5"
    );
    let yaml = cluster.cli_ok(0, &["project", "show", "dev"])?;
    let edited = yaml.replace("development", "dev work");
    cluster.cli_with_stdin(0, &["project", "edit", "dev"], &edited)?;
    let dev = json(&cluster, 0, &["project", "show", "dev"])?;
    assert_eq!(dev["description"], "dev work");
    assert_eq!(dev["config"]["limits.instances"], "5");
    cluster.cli_ok(0, &["project", "unset", "dev", "limits.instances"])?;
    refused(
        &cluster,
        &["project", "delete", "dev"],
        &["still has profiles"],
    )?;
    refused(
        &cluster,
        &["project", "delete", "default"],
        &["default project cannot be deleted"],
    )?;
    refused(
        &cluster,
        &["project", "rename", "default", "x"],
        &["default project cannot be renamed"],
    )?;
    cluster.cli_ok(0, &["project", "rename", "dev", "staging"])?;
    assert_eq!(
        names(&json(
            &cluster,
            0,
            &["profile", "list", "--project", "staging"]
        )?),
        ["default", "web", "web-copy"]
    );
    for profile in ["web", "web-copy"] {
        cluster.cli_ok(0, &["profile", "delete", profile, "--project", "staging"])?;
    }
    cluster.cli_ok(0, &["project", "delete", "staging"])?;
    assert_eq!(
        names(&json(&cluster, 0, &["project", "list"])?),
        ["default"]
    );

    info!("--- values from stdin: config set KEY=- and profile set KEY=-");
    let script = "def instance_placement(request, candidate_members):\n    return\n";
    cluster.cli_with_stdin(0, &["config", "set", "user.x=-"], script)?;
    let value = cluster.cli_ok(0, &["config", "get", "user.x"])?;
    assert_eq!(
        value,
        format!("{script}\n"),
        "printed with one more newline"
    );
    cluster.cli_with_stdin(0, &["profile", "set", "web", "user.script", "-"], "hello")?;
    let web = json(&cluster, 0, &["profile", "show", "web"])?;
    assert_eq!(web["config"]["user.script"], "hello");
    refused(
        &cluster,
        &["profile", "set", "web", "user.a=-", "user.b=-"],
        &["only one value can be read from stdin"],
    )?;

    info!("--- Lua: projects.*");
    let out = cluster.cli_ok(
        0,
        &[
            "exec",
            "projects.create('lua', {config={['user.a']='1'}}); \
             profiles.create('p', {project='lua', config={['limits.cpu']='0-1'}}); \
             local names = {} \
             for _, p in ipairs(profiles.list({project='lua'})) do names[#names+1] = p.name end \
             return table.concat(names, ',')",
        ],
    )?;
    assert_eq!(out.trim(), "\"default,p\"");
    Ok(())
}
