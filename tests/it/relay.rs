//! The relay's upstream protocol against an upper view library (`vigil-sim platform`): the
//! GA/T 1400 client registers with digest, keeps alive, pushes lists and reads the answer per
//! object, tells a refusal of the object from a failure worth retrying, and registers again
//! when the platform has forgotten it (restarted).

use serde_json::{json, Value};
use vigil::sinks::gat1400::client::{Client, Collection, Error, Outcome};

use crate::support::free_port;
use crate::support::platform::Platform;

const GATEWAY: &str = "42010400005030000001";

fn face(n: u32) -> Value {
    // 48 digits: device (20) + "02" + time (14) + serial (5) + "06" (face) + serial (5).
    json!({"FaceID": format!("{GATEWAY}0220261127100000{n:05}06{n:05}"), "InfoKind": 1, "DeviceID": "42010400001190000001"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gat1400_client_registers_pushes_and_reads_each_object() {
    let port = free_port();
    let platform = Platform::start(port, "s3cret");
    let wrong = Client::new(&platform.base, GATEWAY, "wrong").expect("client");
    assert!(matches!(wrong.register().await, Err(Error::Unauthorized(_))), "a wrong password is a 401");
    let client = Client::new(&platform.base, GATEWAY, "s3cret").expect("client");
    // Not registered yet: the platform says so, and that is worth registering for.
    let e = client.push(Collection::Faces, vec![face(1)]).await.expect_err("not registered");
    assert!(matches!(e, Error::Unauthorized(_)) && e.retryable(), "{e}");
    client.register().await.expect("digest registration");
    client.keepalive().await.expect("keepalive");

    // Three faces, one of which the platform refuses: answered per object, in order.
    let bad = face(2);
    platform.control(json!({"reject": [bad["FaceID"]]})).await;
    let outcomes = client.push(Collection::Faces, vec![face(1), bad, face(3)]).await.expect("push");
    assert_eq!(outcomes[0], Outcome::Delivered);
    assert!(matches!(&outcomes[1], Outcome::Rejected(t) if t.contains("StatusCode 8")), "{outcomes:?}");
    assert_eq!(outcomes[2], Outcome::Delivered);
    // The same face again is accepted, and the platform can tell it is a duplicate.
    assert_eq!(client.push(Collection::Faces, vec![face(1)]).await.expect("push"), vec![Outcome::Delivered]);
    let s = platform.stats().await;
    assert_eq!(
        (s["unique"].as_u64(), s["duplicates"].as_u64(), s["rejected"].as_u64()),
        (Some(2), Some(1), Some(1)),
        "{s}"
    );

    // A platform that refuses (503) or fails (500) is worth trying again.
    platform.control(json!({"mode": "refuse"})).await;
    let e = client.push(Collection::Faces, vec![face(4)]).await.expect_err("refused");
    assert!(matches!(e, Error::Status { status: 503, .. }) && e.retryable(), "{e}");
    platform.control(json!({"mode": "error500"})).await;
    assert!(client.push(Collection::Faces, vec![face(4)]).await.expect_err("500").retryable());
    platform.control(json!({"mode": "ok"})).await;

    // Restarted, it has forgotten us: keepalive is a 401, and registering again mends it.
    drop(platform);
    let e = client.keepalive().await.expect_err("platform down");
    assert!(matches!(e, Error::Transport(_)) && e.retryable(), "{e}");
    let platform = Platform::start(port, "s3cret");
    assert!(matches!(client.keepalive().await, Err(Error::Unauthorized(_))));
    client.register().await.expect("registers again");
    assert_eq!(client.push(Collection::Faces, vec![face(5)]).await.expect("push"), vec![Outcome::Delivered]);
    assert_eq!(platform.stats().await["unique"], 1);
}
