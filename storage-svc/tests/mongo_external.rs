//! The mongo and external backends against real servers: the compliance
//! suite on FerretDB (SQLite) and secantusdb; the external-storage client
//! against our own server over memory (the storage-svc binary), disk and
//! mongo, and against an independent Go server; Athens' Mongo layout
//! written without our code and served as it is; bad input; TLS; config.

#[path = "mongo_external/servers.rs"]
mod servers;

use futures::StreamExt;
use modmesh_proto::{ErrorKind, ModulePath};
use modmesh_storage::backends::external::{ExternalConfig, ExternalStorage};
use modmesh_storage::backends::mongo::{grid_file_name, MongoConfig, MongoStorage};
use modmesh_storage::backends::{DiskStorage, MemoryStorage};
use modmesh_storage::compliance::{self, coords, Fixture};
use modmesh_storage::{storage_compliance_tests, Storage};
use mongodb::bson::{doc, oid::ObjectId, spec::BinarySubtype, Binary, Bson, Document};
use servers::MongoServer;
use std::sync::Arc;
use std::time::Duration;

// ------------------------------------------------------------- fixtures

fn mongo_config(url: &str, db: &str) -> MongoConfig {
    let text = format!(
        "[Storage.Mongo]\nURL = {url:?}\nDefaultDBName = {db:?}\nDefaultCollectionName = \"modules\"\n"
    );
    let cfg = modmesh_common::Config::from_text(&text, &[]).unwrap();
    cfg.section().unwrap()
}

fn fresh_db() -> String {
    format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

fn mongo_store(which: MongoServer) -> (MongoStorage, String, String) {
    let url = servers::mongo_url(which);
    let db = fresh_db();
    let s = MongoStorage::new(mongo_config(&url, &db), Duration::from_secs(30)).unwrap();
    (s, url, db)
}

async fn mongo_backend(which: MongoServer) -> Fixture {
    let (s, _, _) = mongo_store(which);
    Fixture::new(Arc::new(s))
}

/// A plain driver handle on the same database, for writing and checking
/// documents without our code.
async fn raw_db(url: &str, db: &str) -> mongodb::Database {
    mongodb::Client::with_uri_str(url)
        .await
        .unwrap()
        .database(db)
}

/// Our external-storage server over `inner`, in this process, reached by
/// our external client.
async fn external_over(inner: Fixture) -> Fixture {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(modmesh_storage::external_server::serve(
        listener,
        inner.storage.clone(),
        futures::future::pending(),
    ));
    let client = ExternalStorage::new(&format!("http://{addr}/")).unwrap();
    Fixture::new(Arc::new(client))
        .keep(AbortOnDrop(task))
        .keep(inner)
}

struct AbortOnDrop(tokio::task::JoinHandle<std::io::Result<()>>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn external_disk() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let disk = Fixture::new(Arc::new(DiskStorage::new(dir.path()).unwrap())).keep(dir);
    external_over(disk).await
}

async fn external_mongo() -> Fixture {
    external_over(mongo_backend(MongoServer::Ferret).await).await
}

/// The storage-svc binary (memory backend) serving the protocol: the
/// 200 MiB it holds are in that process, not this one.
async fn external_storage_svc_memory() -> Fixture {
    let url = servers::storage_svc_memory_external();
    Fixture::new(Arc::new(ExternalStorage::new(&url).unwrap()))
}

async fn external_go() -> Fixture {
    let url = servers::go_extserver();
    Fixture::new(Arc::new(ExternalStorage::new(&url).unwrap()))
}

storage_compliance_tests!(mongo_ferretdb, mongo_backend(MongoServer::Ferret));
storage_compliance_tests!(mongo_secantusdb, mongo_backend(MongoServer::Secantus));
storage_compliance_tests!(external_memory_svc, external_storage_svc_memory());
storage_compliance_tests!(external_disk_backend, external_disk());
storage_compliance_tests!(external_mongo_backend, external_mongo());
storage_compliance_tests!(external_go_server, external_go());

// -------------------------------------------------------- Athens' layout

const QUOTE_ZIP: &[u8] = include_bytes!("fixtures/rsc.io-quote-v1.5.2.zip");
const QUOTE_MOD: &[u8] = include_bytes!("fixtures/rsc.io-quote-v1.5.2.mod");
const QUOTE_INFO: &[u8] = include_bytes!("fixtures/rsc.io-quote-v1.5.2.info");
const QUOTE_H1: &str = "h1:w5fcysjrx7yqtD/aO+QwRjYZOKnaM9Uh2b40tElTs3Y=";
const QUOTE_MOD_H1: &str = "h1:LzX7hefJvL54yjefDEDHNONDjII0t9xZLPXsUe+TKr0=";

fn bin(b: &[u8]) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes: b.to_vec(),
    })
}

/// Writes a version the way Athens does: a GridFS upload under Athens'
/// name, then `{module, version, mod, info}`; with the driver only.
async fn athens_write(
    db: &mongodb::Database,
    module: &str,
    version: &str,
    info: &[u8],
    m: &[u8],
    zip: &[u8],
) {
    use futures::AsyncWriteExt;
    let bucket = db.gridfs_bucket(None);
    let mut up = bucket
        .open_upload_stream(format!("{}_{version}.zip", module.replace('/', "_")))
        .await
        .unwrap();
    up.write_all(zip).await.unwrap();
    up.close().await.unwrap();
    db.collection::<Document>("modules")
        .insert_one(doc! {"module": module, "version": version, "mod": bin(m), "info": bin(info)})
        .await
        .unwrap();
}

async fn read_all(
    s: &dyn Storage,
    c: &modmesh_proto::Coordinates,
) -> modmesh_proto::Result<Vec<u8>> {
    let mut z = s.zip(c).await?;
    let mut out = Vec::new();
    while let Some(chunk) = z.stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// A database filled the way Athens fills it (by the driver here, not our
/// code) is listed, read, stat'ed and catalogued as it is; and what we save
/// is found where Athens looks.
#[tokio::test(flavor = "multi_thread")]
async fn athens_mongo_database_is_served_as_is() {
    let url = servers::mongo_url(MongoServer::Ferret);
    let dbname = fresh_db();
    let db = raw_db(&url, &dbname).await;
    athens_write(
        &db,
        "rsc.io/quote",
        "v1.5.2",
        QUOTE_INFO,
        QUOTE_MOD,
        QUOTE_ZIP,
    )
    .await;
    athens_write(
        &db,
        "example.com/Foo",
        "v1.0.0",
        b"{}",
        b"module example.com/Foo\n",
        b"zipbytes",
    )
    .await;
    // A re-upload Athens made after a crash: the newest revision is served.
    athens_write(&db, "example.com/bar", "v0.1.0", b"i", b"m", b"new").await;
    {
        use futures::AsyncWriteExt;
        let mut old = db
            .gridfs_bucket(None)
            .open_upload_stream("example.com_bar_v0.1.0.zip")
            .await
            .unwrap();
        old.write_all(b"newest").await.unwrap();
        old.close().await.unwrap();
    }
    // Athens' crash between upload and document: not visible.
    {
        use futures::AsyncWriteExt;
        let mut up = db
            .gridfs_bucket(None)
            .open_upload_stream("example.com_Foo_v1.1.0.zip")
            .await
            .unwrap();
        up.write_all(b"partial").await.unwrap();
        up.close().await.unwrap();
    }

    let s = MongoStorage::new(mongo_config(&url, &dbname), Duration::from_secs(30)).unwrap();
    let q = coords("rsc.io/quote", "v1.5.2");
    compliance::assert_stored(&s, &q, QUOTE_INFO, QUOTE_MOD, QUOTE_ZIP).await;
    let st = s.stat(&q).await.unwrap();
    assert_eq!(st.zip_hash.as_deref(), Some(QUOTE_H1));
    assert_eq!(st.mod_hash, QUOTE_MOD_H1);
    assert_eq!(st.zip_size, QUOTE_ZIP.len() as u64);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (now - st.stored_at_unix_ms).abs() < 120_000,
        "stored_at from the ObjectId"
    );
    assert_eq!(s.list(&q.module).await.unwrap(), ["v1.5.2"]);
    compliance::assert_stored(
        &s,
        &coords("example.com/Foo", "v1.0.0"),
        b"{}",
        b"module example.com/Foo\n",
        b"zipbytes",
    )
    .await;
    assert_eq!(
        read_all(&s, &coords("example.com/bar", "v0.1.0"))
            .await
            .unwrap(),
        b"newest"
    );
    compliance::assert_absent(&s, &coords("example.com/Foo", "v1.1.0")).await;
    let page = s.catalog(None, 10, "").await.unwrap();
    assert_eq!(
        page.entries,
        [
            q.clone(),
            coords("example.com/Foo", "v1.0.0"),
            coords("example.com/bar", "v0.1.0")
        ]
    );
    // Our save of the version Athens left half-done, and Athens' reading
    // of it: the document by module and version, the zip by name.
    let foo11 = coords("example.com/Foo", "v1.1.0");
    compliance::save(&s, &foo11, b"info11", b"mod11", b"whole")
        .await
        .unwrap();
    let d = db
        .collection::<Document>("modules")
        .find_one(doc! {"module": "example.com/Foo", "version": "v1.1.0"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.get_binary_generic("mod").unwrap(), b"mod11");
    assert_eq!(d.get_binary_generic("info").unwrap(), b"info11");
    let mut down = db
        .gridfs_bucket(None)
        .open_download_stream_by_name(grid_file_name("example.com/Foo", "v1.1.0"))
        .await
        .unwrap();
    let mut got = Vec::new();
    futures::AsyncReadExt::read_to_end(&mut down, &mut got)
        .await
        .unwrap();
    assert_eq!(got, b"whole");
    // Athens' index is there, and refuses a second document.
    let names = db
        .collection::<Document>("modules")
        .list_index_names()
        .await
        .unwrap();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("base_url_1_module_1_version_1")),
        "{names:?}"
    );
    let dup = db
        .collection::<Document>("modules")
        .insert_one(doc! {"module": "rsc.io/quote", "version": "v1.5.2", "mod": bin(b"x"), "info": bin(b"y")})
        .await;
    assert!(
        dup.is_err(),
        "a second document for one version was accepted"
    );
    // Deleting an Athens version removes its document and its zip.
    s.delete(&q).await.unwrap();
    compliance::assert_absent(&s, &q).await;
    let left = db
        .collection::<Document>("fs.files")
        .count_documents(doc! {"filename": "rsc.io_quote_v1.5.2.zip"})
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// A malformed document, a missing GridFS file and a missing chunk are
/// `Internal` errors with a clear message, never a panic or a short zip.
#[tokio::test(flavor = "multi_thread")]
async fn mongo_bad_data_is_an_error() {
    let (s, url, dbname) = mongo_store(MongoServer::Ferret);
    let db = raw_db(&url, &dbname).await;
    let modules = db.collection::<Document>("modules");
    // Connect (and index) through our store first.
    assert!(s
        .list(&ModulePath::new("example.com/x").unwrap())
        .await
        .unwrap()
        .is_empty());

    modules
        .insert_one(
            doc! {"module": "example.com/bad", "version": "v1.0.0", "mod": 42, "info": bin(b"i")},
        )
        .await
        .unwrap();
    let c = coords("example.com/bad", "v1.0.0");
    let e = s.go_mod(&c).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Internal, "{e}");
    assert!(e.message.contains("malformed document"), "{e}");
    assert_eq!(s.info(&c).await.unwrap_err().kind, ErrorKind::Internal);

    modules
        .insert_one(doc! {"module": "example.com/nozip", "version": "v1.0.0", "mod": bin(b"m"), "info": bin(b"i")})
        .await
        .unwrap();
    let e = s
        .zip(&coords("example.com/nozip", "v1.0.0"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Internal, "{e}");
    assert!(e.message.contains("missing from GridFS"), "{e}");

    // A zip of several chunks with one chunk gone.
    let c = coords("example.com/holes", "v1.0.0");
    let zip = compliance::Rng::new(4).bytes(3 * 255 * 1024 + 10);
    compliance::save(&s, &c, b"i", b"m", &zip).await.unwrap();
    let d = modules
        .find_one(doc! {"module": "example.com/holes"})
        .await
        .unwrap()
        .unwrap();
    let zip_id = d.get_object_id("zip_id").unwrap();
    let r = db
        .collection::<Document>("fs.chunks")
        .delete_one(doc! {"files_id": zip_id, "n": 1})
        .await
        .unwrap();
    assert_eq!(r.deleted_count, 1);
    match read_all(&s, &c).await {
        Ok(b) => panic!("a zip with a missing chunk was served ({} bytes)", b.len()),
        Err(e) => assert!(
            matches!(e.kind, ErrorKind::Internal | ErrorKind::Unavailable),
            "{e}"
        ),
    }
}

/// An upload whose save crashed before its document (a pending record and
/// a GridFS file, nothing else) is removed once stale; a finished one stays.
#[tokio::test(flavor = "multi_thread")]
async fn mongo_orphaned_uploads_are_cleaned() {
    use futures::AsyncWriteExt;
    let (s, url, dbname) = mongo_store(MongoServer::Ferret);
    let db = raw_db(&url, &dbname).await;
    let kept = coords("example.com/kept", "v1.0.0");
    compliance::save(&s, &kept, b"i", b"m", b"zip")
        .await
        .unwrap();
    // The crash: upload recorded and written, no document.
    let orphan = ObjectId::new();
    let pending = db.collection::<Document>("modules.modmesh_pending");
    pending
        .insert_one(doc! {"_id": orphan, "started": mongodb::bson::DateTime::now()})
        .await
        .unwrap();
    let mut up = db
        .gridfs_bucket(None)
        .open_upload_stream("example.com_lost_v1.0.0.zip")
        .id(Bson::ObjectId(orphan))
        .await
        .unwrap();
    up.write_all(&vec![7u8; 600_000]).await.unwrap();
    up.close().await.unwrap();
    // Not stale yet: kept.
    assert_eq!(s.clean_orphans(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(s.clean_orphans(Duration::ZERO).await.unwrap(), 1);
    let files = db.collection::<Document>("fs.files");
    let chunks = db.collection::<Document>("fs.chunks");
    assert_eq!(
        files.count_documents(doc! {"_id": orphan}).await.unwrap(),
        0
    );
    assert_eq!(
        chunks
            .count_documents(doc! {"files_id": orphan})
            .await
            .unwrap(),
        0
    );
    assert_eq!(pending.count_documents(doc! {}).await.unwrap(), 0);
    compliance::assert_stored(&s, &kept, b"i", b"m", b"zip").await;
    // A new store on the same database cleans up at first use too.
    let orphan2 = ObjectId::new();
    let old = mongodb::bson::DateTime::from_millis(
        mongodb::bson::DateTime::now().timestamp_millis() - 7_200_000,
    );
    pending
        .insert_one(doc! {"_id": orphan2, "started": old})
        .await
        .unwrap();
    let mut up = db
        .gridfs_bucket(None)
        .open_upload_stream("example.com_lost_v1.0.1.zip")
        .id(Bson::ObjectId(orphan2))
        .await
        .unwrap();
    up.write_all(b"x").await.unwrap();
    up.close().await.unwrap();
    let s2 = MongoStorage::new(mongo_config(&url, &dbname), Duration::from_secs(30)).unwrap();
    s2.health().await.unwrap();
    assert_eq!(
        files.count_documents(doc! {"_id": orphan2}).await.unwrap(),
        0
    );
    // Failed and cancelled saves leave no upload behind.
    let c = coords("example.com/failed", "v1.0.0");
    let r = s
        .save(
            compliance::request(&c, b"i", b"m"),
            compliance::failing_stream(600_000, modmesh_proto::Error::unavailable("cut")),
        )
        .await;
    assert_eq!(r.unwrap_err().kind, ErrorKind::Unavailable);
    compliance::cancelled_save(Arc::new(
        MongoStorage::new(mongo_config(&url, &dbname), Duration::from_secs(30)).unwrap(),
    ))
    .await;
    let mut left = 0;
    for _ in 0..50 {
        left = files
            .count_documents(doc! {"filename": {"$in": ["example.com_failed_v1.0.0.zip"]}})
            .await
            .unwrap()
            + pending.count_documents(doc! {}).await.unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "uploads of failed saves left behind");
}

// --------------------------------------------------------------- config

#[test]
fn mongo_config_keys_env_and_defaults() {
    use modmesh_common::Config;
    let c: MongoConfig = Config::from_text("[Storage.Mongo]\nURL = \"mongodb://h:1\"\n", &[])
        .unwrap()
        .section()
        .unwrap();
    assert_eq!(
        (c.DefaultDBName.as_str(), c.DefaultCollectionName.as_str()),
        ("athens", "modules")
    );
    assert!(!c.Insecure && c.CertPath.is_empty());
    // The file's names are honoured (Athens reads the collection from the
    // environment only).
    let c: MongoConfig = Config::from_text(
        "[Storage.Mongo]\nURL = \"mongodb://h:1\"\nDefaultDBName = \"db1\"\nDefaultCollectionName = \"c1\"\nInsecure = true\n",
        &[],
    )
    .unwrap()
    .section()
    .unwrap();
    assert_eq!(
        (
            c.DefaultDBName.as_str(),
            c.DefaultCollectionName.as_str(),
            c.Insecure
        ),
        ("db1", "c1", true)
    );
    let ca = tempfile::NamedTempFile::new().unwrap();
    let ca_path = ca.path().display().to_string();
    let c: MongoConfig = Config::from_text(
        "[Storage.Mongo]\nURL = \"mongodb://h:1\"\nDefaultCollectionName = \"c1\"\n",
        &[
            ("ATHENS_MONGO_STORAGE_URL", "mongodb://e:2"),
            ("ATHENS_MONGO_DEFAULT_DATABASE", "db2"),
            ("ATHENS_MONGO_DEFAULT_COLLECTION", "c2"),
            ("ATHENS_MONGO_CERT_PATH", &ca_path),
            ("ATHENS_MONGO_INSECURE", "true"),
        ],
    )
    .unwrap()
    .section()
    .unwrap();
    assert_eq!(c.URL, "mongodb://e:2");
    assert_eq!(
        (c.DefaultDBName.as_str(), c.DefaultCollectionName.as_str()),
        ("db2", "c2")
    );
    assert_eq!(c.CertPath, ca_path);
    assert!(c.Insecure);
    for (text, key) in [
        ("", "Storage.Mongo.URL"),
        ("[Storage.Mongo]\nURL = \"http://x\"\n", "Storage.Mongo.URL"),
        (
            "[Storage.Mongo]\nURL = \"mongodb://h\"\nCertPath = \"/nonexistent/ca.pem\"\n",
            "Storage.Mongo.CertPath",
        ),
        (
            "[Storage.Mongo]\nURL = \"mongodb://h\"\nDefaultDBName = \"\"\n",
            "Storage.Mongo.DefaultDBName",
        ),
    ] {
        let cfg = Config::from_text(&format!("StorageType = \"mongo\"\n{text}"), &[]).unwrap();
        let e = modmesh_storage::from_config(&cfg).err().expect(text);
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(e.message.contains(key), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn from_config_builds_mongo_and_external() {
    use modmesh_common::Config;
    let url = servers::mongo_url(MongoServer::Ferret);
    let db = fresh_db();
    let cfg = Config::from_text(
        "StorageType = \"mongo\"\n",
        &[
            ("ATHENS_MONGO_STORAGE_URL", &url),
            ("ATHENS_MONGO_DEFAULT_DATABASE", &db),
        ],
    )
    .unwrap();
    let s = modmesh_storage::from_config(&cfg).unwrap();
    let c = coords("example.com/cfg", "v1.0.0");
    compliance::save_mock(&*s, &c).await;
    let raw = raw_db(&url, &db).await;
    assert_eq!(
        raw.collection::<Document>("modules")
            .count_documents(doc! {"module": "example.com/cfg"})
            .await
            .unwrap(),
        1
    );
    let ext = servers::storage_svc_memory_external();
    let cfg = Config::from_text(
        &format!("StorageType = \"external\"\n[Storage.External]\nURL = {ext:?}\n"),
        &[],
    )
    .unwrap();
    let s = modmesh_storage::from_config(&cfg).unwrap();
    s.health().await.unwrap();
    let c: ExternalConfig =
        Config::from_text("", &[("ATHENS_EXTERNAL_STORAGE_URL", "http://e:1/")])
            .unwrap()
            .section()
            .unwrap();
    assert_eq!(c.URL, "http://e:1/");
    for text in [
        "",
        "[Storage.External]\nURL = \"ftp://x\"\n",
        "[Storage.External]\nURL = \"::\"\n",
    ] {
        let cfg = Config::from_text(&format!("StorageType = \"external\"\n{text}"), &[]).unwrap();
        let e = modmesh_storage::from_config(&cfg).err().expect(text);
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(e.message.contains("Storage.External.URL"), "{e}");
    }
    let e = Config::from_text("ExternalStorageListen = \"nonsense\"\n", &[])
        .unwrap()
        .section::<modmesh_storage::external_server::ExternalServerConfig>()
        .unwrap_err();
    assert!(e.to_string().contains("ExternalStorageListen"), "{e}");
}

// ------------------------------------------------------------------ TLS

/// CertPath trusts the CA that signed FerretDB's TLS certificate; without
/// it the certificate is refused, and Insecure accepts it anyway.
#[tokio::test(flavor = "multi_thread")]
async fn mongo_tls_cert_path_and_insecure() {
    let tls = servers::tls_ferret();
    let url = format!(
        "mongodb://{}/?tls=true&serverSelectionTimeoutMS=3000",
        tls.tls_addr
    );
    let ca = tls.ca.display().to_string();
    let open = |extra: &str| {
        let text = format!(
            "[Storage.Mongo]\nURL = {url:?}\nDefaultDBName = {:?}\n{extra}",
            fresh_db()
        );
        let cfg: MongoConfig = modmesh_common::Config::from_text(&text, &[])
            .unwrap()
            .section()
            .unwrap();
        MongoStorage::new(cfg, Duration::from_secs(3)).unwrap()
    };
    let c = coords("example.com/tls", "v1.0.0");
    let trusted = open(&format!("CertPath = {ca:?}\n"));
    compliance::save_mock(&trusted, &c).await;
    compliance::assert_stored(&trusted, &c, b"123", b"456", b"789").await;
    let e = open("").health().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    open("Insecure = true\n").health().await.unwrap();
    // CertPath alone turns TLS on, on a URL without tls=true.
    let text = format!(
        "[Storage.Mongo]\nURL = \"mongodb://{}/\"\nCertPath = {ca:?}\n",
        tls.tls_addr
    );
    let cfg: MongoConfig = modmesh_common::Config::from_text(&text, &[])
        .unwrap()
        .section()
        .unwrap();
    MongoStorage::new(cfg, Duration::from_secs(5))
        .unwrap()
        .health()
        .await
        .unwrap();
    tls.proc.kill();
}

// ------------------------------------------------------ external protocol

/// What Athens' client sends: the module escaped, the version not, the
/// three parts in order; a list ends with a newline.
#[tokio::test(flavor = "multi_thread")]
async fn external_server_speaks_athens_protocol() {
    let memory: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let _srv = AbortOnDrop(tokio::spawn(modmesh_storage::external_server::serve(
        listener,
        memory.clone(),
        futures::future::pending(),
    )));
    let http = reqwest::Client::new();
    let zip = compliance::Rng::new(1).bytes(3 << 20);
    let form = reqwest::multipart::Form::new()
        .part(
            "mod.info",
            reqwest::multipart::Part::bytes(b"{\"Version\":\"v1.0.0-RC1\"}".to_vec())
                .file_name("mod.info"),
        )
        .part(
            "mod.mod",
            reqwest::multipart::Part::bytes(b"module github.com/Foo/bar\n".to_vec())
                .file_name("mod.mod"),
        )
        .part(
            "mod.zip",
            reqwest::multipart::Part::bytes(zip.clone()).file_name("mod.zip"),
        );
    let r = http
        .post(format!("{base}/github.com/!foo/bar/@v/v1.0.0-RC1.save"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let c = coords("github.com/Foo/bar", "v1.0.0-RC1");
    compliance::assert_stored(
        &*memory,
        &c,
        b"{\"Version\":\"v1.0.0-RC1\"}",
        b"module github.com/Foo/bar\n",
        &zip,
    )
    .await;
    let list = http
        .get(format!("{base}/github.com/!foo/bar/@v/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    assert_eq!(list.text().await.unwrap(), "v1.0.0-RC1\n");
    // Our client's escaped form reaches the same version.
    let r = http
        .get(format!("{base}/github.com/!foo/bar/@v/v1.0.0-!r!c1.info"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{base}/github.com/!foo/bar/@v/v1.0.0-RC1.zip"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()[reqwest::header::CONTENT_LENGTH],
        zip.len().to_string().as_str()
    );
    assert!(r.bytes().await.unwrap() == zip);
    // Statuses keep their kind.
    let form = reqwest::multipart::Form::new()
        .part(
            "mod.info",
            reqwest::multipart::Part::bytes(b"i".to_vec()).file_name("mod.info"),
        )
        .part(
            "mod.mod",
            reqwest::multipart::Part::bytes(b"m".to_vec()).file_name("mod.mod"),
        )
        .part(
            "mod.zip",
            reqwest::multipart::Part::bytes(b"z".to_vec()).file_name("mod.zip"),
        );
    let r = http
        .post(format!("{base}/github.com/!foo/bar/@v/v1.0.0-RC1.save"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    for (method, path, status) in [
        (
            reqwest::Method::GET,
            "/github.com/!foo/bar/@v/v9.0.0.info",
            404,
        ),
        (
            reqwest::Method::GET,
            "/github.com/Foo/bar/@v/v1.0.0.info",
            400,
        ),
        (
            reqwest::Method::GET,
            "/github.com/!foo/bar/@v/..%2f..%2fetc.info",
            400,
        ),
        (
            reqwest::Method::DELETE,
            "/github.com/!foo/bar/@v/v9.0.0.delete",
            404,
        ),
        (
            reqwest::Method::POST,
            "/github.com/!foo/bar/@v/v2.0.0.save",
            400,
        ),
        (
            reqwest::Method::POST,
            "/github.com/!foo/bar/@v/master.save",
            400,
        ),
        (reqwest::Method::GET, "/nothing", 404),
        (reqwest::Method::GET, "/catalog?pagesize=x", 400),
        (reqwest::Method::GET, "/catalog?token=%21%21", 400),
    ] {
        let r = http
            .request(method.clone(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{method} {path}");
    }
    let r = http
        .delete(format!("{base}/github.com/!foo/bar/@v/v1.0.0-RC1.delete"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!memory.exists(&c).await.unwrap());
}

/// A tiny HTTP server answering every request with `response` (raw bytes),
/// for garbage; returns its base URL.
async fn garbage_server(response: &'static [u8]) -> (String, AbortOnDrop) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let (mut sock, _) = l.accept().await?;
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(response).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (base, AbortOnDrop(task))
}

#[tokio::test(flavor = "multi_thread")]
async fn external_client_survives_garbage_and_outages() {
    let c = coords("example.com/g", "v1.0.0");
    let m = ModulePath::new("example.com/g").unwrap();
    // Lines that are no versions.
    let (base, _g1) = garbage_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\n<html>\n</ht>",
    )
    .await;
    let s = ExternalStorage::new(&base).unwrap();
    let e = s.list(&m).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Internal, "{e}");
    assert!(e.message.contains("garbage"), "{e}");
    let e = s.stat(&c).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Internal, "{e}");
    let e = s.catalog(None, 10, "").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Internal, "{e}");
    // A list with and without a trailing newline, and CRLF.
    let (base, _g2) = garbage_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\nConnection: close\r\n\r\nv1.0.0\r\nv1.1.0\r\n",
    )
    .await;
    assert_eq!(
        ExternalStorage::new(&base).unwrap().list(&m).await.unwrap(),
        ["v1.0.0", "v1.1.0"]
    );
    let (base, _g3) = garbage_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nConnection: close\r\n\r\nv1.1.0\nv1.0.0",
    )
    .await;
    assert_eq!(
        ExternalStorage::new(&base).unwrap().list(&m).await.unwrap(),
        ["v1.0.0", "v1.1.0"]
    );
    // A zip cut short of its Content-Length.
    let (base, _g4) = garbage_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\nPK\x03\x04short",
    )
    .await;
    match read_all(&ExternalStorage::new(&base).unwrap(), &c).await {
        Ok(b) => panic!("a short zip was served ({} bytes)", b.len()),
        Err(e) => assert!(
            matches!(e.kind, ErrorKind::Unavailable | ErrorKind::Internal),
            "{e}"
        ),
    }
    // A zip without Content-Length.
    let (base, _g7) =
        garbage_server(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nPK\x03\x04whatever").await;
    let e = ExternalStorage::new(&base)
        .unwrap()
        .zip(&c)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Internal, "{e}");
    assert!(e.message.contains("Content-Length"), "{e}");
    // Not HTTP at all.
    let (base, _g5) = garbage_server(b"\x00\x01garbage\r\n\r\n").await;
    let e = ExternalStorage::new(&base)
        .unwrap()
        .info(&c)
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::Unavailable | ErrorKind::Internal),
        "{e}"
    );
    // A 500 keeps its kind, with the body in the message.
    let (base, _g6) = garbage_server(
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\nboom",
    )
    .await;
    let e = ExternalStorage::new(&base)
        .unwrap()
        .info(&c)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Internal);
    assert!(e.message.contains("boom"), "{e}");

    // Down, then back on the same port: Unavailable, then served.
    let port = servers::free_port();
    let s = ExternalStorage::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let e = s.health().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert_eq!(s.exists(&c).await.unwrap_err().kind, ErrorKind::Unavailable);
    let memory: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let srv = tokio::spawn(modmesh_storage::external_server::serve(l, memory, async {
        let _ = stopped.await;
    }));
    s.health().await.unwrap();
    compliance::save_mock(&s, &c).await;
    compliance::assert_stored(&s, &c, b"123", b"456", b"789").await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), srv)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let e = s.info(&c).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
}

/// The storage-svc binary serves the protocol next to gRPC, over one store:
/// what one side saves, the other reads.
#[tokio::test(flavor = "multi_thread")]
async fn storage_svc_serves_both_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = format!("127.0.0.1:{}", servers::free_port());
    let http = format!("127.0.0.1:{}", servers::free_port());
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_storage-svc"));
    cmd.current_dir(dir.path())
        .env("ATHENS_STORAGE_TYPE", "disk")
        .env("ATHENS_DISK_STORAGE_ROOT", dir.path())
        .env("ATHENS_STORAGE_SVC_LISTEN", &grpc)
        .env("ATHENS_EXTERNAL_STORAGE_LISTEN", &http)
        .env("ATHENS_LOG_LEVEL", "error")
        .stderr(std::process::Stdio::null());
    let keep = tempfile::tempdir().unwrap();
    let p = servers::spawn(cmd, keep, http.clone());
    servers::wait_port("storage-svc http", &http, Duration::from_secs(30));
    servers::wait_port("storage-svc grpc", &grpc, Duration::from_secs(30));
    let ext = ExternalStorage::new(&format!("http://{http}")).unwrap();
    let rpc = modmesh_storage::client::StorageClient::new(&format!("http://{grpc}")).unwrap();
    let a = coords("example.com/both", "v1.0.0");
    let b = coords("example.com/both", "v1.1.0");
    compliance::save(&ext, &a, b"ia", b"ma", b"za")
        .await
        .unwrap();
    compliance::save(&rpc, &b, b"ib", b"mb", b"zb")
        .await
        .unwrap();
    compliance::assert_stored(&rpc, &a, b"ia", b"ma", b"za").await;
    compliance::assert_stored(&ext, &b, b"ib", b"mb", b"zb").await;
    assert!(dir
        .path()
        .join("example.com/both/v1.0.0/source.zip")
        .exists());
    // SIGTERM stops both listeners, exit 0.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(p.pid, libc::SIGTERM);
    }
    let mut stopped = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(&http).is_err()
            && std::net::TcpStream::connect(&grpc).is_err()
        {
            stopped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(stopped, "storage-svc still listening after SIGTERM");
}

/// A Mongo server that is not there: `Unavailable` within the timeout, for
/// every operation, and the store works once a server answers there.
#[tokio::test(flavor = "multi_thread")]
async fn mongo_down_is_unavailable() {
    let port = servers::free_port();
    let cfg = mongo_config(&format!("mongodb://127.0.0.1:{port}/"), &fresh_db());
    let s = MongoStorage::new(cfg, Duration::from_secs(2)).unwrap();
    let started = std::time::Instant::now();
    let e = s.health().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    let c = coords("example.com/down", "v1.0.0");
    assert_eq!(s.exists(&c).await.unwrap_err().kind, ErrorKind::Unavailable);
    let e = compliance::save(&s, &c, b"i", b"m", b"z")
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

// ------------------------------------------------------------ real Athens

async fn get(url: &str) -> (u16, Vec<u8>) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    (status, r.bytes().await.unwrap().to_vec())
}

/// Athens itself (v0.18.0) serves a Mongo database we filled, and runs on
/// our storage through the external-storage protocol: it reads what we
/// stored and saves what it fetches (a zip over 1 MiB) through our server.
#[tokio::test(flavor = "multi_thread")]
async fn athens_uses_our_mongo_and_external_storage() {
    // Mongo: we save, Athens (which cannot fetch: GOPROXY=off) serves.
    let (ours, url, dbname) = mongo_store(MongoServer::Ferret);
    let q = coords("rsc.io/quote", "v1.5.2");
    compliance::save(&ours, &q, QUOTE_INFO, QUOTE_MOD, QUOTE_ZIP)
        .await
        .unwrap();
    let (athens, base) = tokio::task::spawn_blocking(move || {
        servers::start_athens(&[
            ("ATHENS_STORAGE_TYPE", "mongo"),
            ("ATHENS_MONGO_STORAGE_URL", &url),
            ("ATHENS_MONGO_DEFAULT_DATABASE", &dbname),
            ("ATHENS_GO_BINARY_ENV_VARS", "GOPROXY=off"),
        ])
    })
    .await
    .unwrap();
    assert_eq!(
        get(&format!("{base}/rsc.io/quote/@v/v1.5.2.info")).await,
        (200, QUOTE_INFO.to_vec())
    );
    assert_eq!(
        get(&format!("{base}/rsc.io/quote/@v/v1.5.2.mod")).await,
        (200, QUOTE_MOD.to_vec())
    );
    assert_eq!(
        get(&format!("{base}/rsc.io/quote/@v/v1.5.2.zip")).await,
        (200, QUOTE_ZIP.to_vec())
    );
    athens.kill();

    // External: a module stored through our client is served by Athens;
    // a module Athens fetches is saved through our server.
    let ext = servers::storage_svc_memory_external();
    let store = ExternalStorage::new(&ext).unwrap();
    let pre = coords("example.com/Pre", "v1.0.0-RC1");
    let pre_zip = compliance::Rng::new(21).bytes(3 << 20);
    compliance::save(
        &store,
        &pre,
        b"{\"Version\":\"v1.0.0-RC1\"}",
        b"module example.com/Pre\n",
        &pre_zip,
    )
    .await
    .unwrap();
    // An upstream of one module whose zip is over 1 MiB.
    let up = tempfile::tempdir().unwrap();
    let m = format!(
        "example.com/up{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let v = "v1.0.0";
    let go_mod = format!("module {m}\n\ngo 1.21\n");
    let big = compliance::Rng::new(22).bytes(2 << 20);
    let files_owned = [
        (format!("{m}@{v}/go.mod"), go_mod.clone().into_bytes()),
        (format!("{m}@{v}/up.go"), b"package up\n".to_vec()),
        (format!("{m}@{v}/blob.bin"), big),
    ];
    let files: Vec<(&str, &[u8])> = files_owned
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let zip = compliance::make_zip(&files);
    assert!(zip.len() > 1 << 20);
    let vdir = up.path().join(&m).join("@v");
    std::fs::create_dir_all(&vdir).unwrap();
    std::fs::write(vdir.join("list"), format!("{v}\n")).unwrap();
    std::fs::write(
        vdir.join(format!("{v}.info")),
        format!("{{\"Version\":\"{v}\"}}"),
    )
    .unwrap();
    std::fs::write(vdir.join(format!("{v}.mod")), &go_mod).unwrap();
    std::fs::write(vdir.join(format!("{v}.zip")), &zip).unwrap();
    let goproxy = format!(
        "GOPROXY=file://{};GOSUMDB=off;GOFLAGS=-mod=mod",
        up.path().display()
    );
    let ext2 = ext.clone();
    let (athens, base) = tokio::task::spawn_blocking(move || {
        servers::start_athens(&[
            ("ATHENS_STORAGE_TYPE", "external"),
            ("ATHENS_EXTERNAL_STORAGE_URL", &ext2),
            ("ATHENS_GO_BINARY_ENV_VARS", &goproxy),
        ])
    })
    .await
    .unwrap();
    let (status, body) = get(&format!("{base}/example.com/!pre/@v/v1.0.0-!r!c1.zip")).await;
    assert_eq!(status, 200);
    assert!(body == pre_zip, "Athens served other bytes for our module");
    let (status, body) = get(&format!("{base}/{m}/@v/{v}.zip")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(body == zip);
    // Athens saved it through our server: our client reads it back.
    let c = coords(&m, v);
    let mut stored = false;
    for _ in 0..100 {
        if store.exists(&c).await.unwrap() {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored, "the module Athens fetched is not in our store");
    assert_eq!(read_all(&store, &c).await.unwrap(), zip);
    assert_eq!(store.go_mod(&c).await.unwrap(), go_mod.as_bytes());
    assert_eq!(store.list(&c.module).await.unwrap(), [v]);
    athens.kill();
}
