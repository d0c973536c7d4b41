//! A fresh PostgreSQL database per test, created from `VIGILTEST_DATABASE_URL`
//! (default postgres://postgres@127.0.0.1:5432/test) and dropped when the guard drops.

use sqlx::Connection;

pub struct TestDb {
    pub url: String,
    admin_url: String,
    name: String,
}

fn admin_url() -> String {
    std::env::var("VIGILTEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

impl TestDb {
    pub async fn create() -> Self {
        let admin = admin_url();
        let name = format!("vigil_test_{}_{}", std::process::id(), uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL at {admin} is not reachable ({e}): run scripts/services.sh (make test does)")
        });
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create test database");
        let _ = conn.close().await;
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(admin.clone());
        TestDb { url: format!("{base}/{name}"), admin_url: admin, name }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var("VIGILTEST_KEEP").is_ok() {
            eprintln!("keeping database {}", self.url);
            return;
        }
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}
