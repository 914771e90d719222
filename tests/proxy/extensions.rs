//! Extensions: CREATE/ALTER/DROP EXTENSION through a proxy replicate as
//! the client's statement, and the extension's script runs on every
//! replica; values of extension types replicate exactly.

use crate::common;

use common::cluster::Cluster;

#[tokio::test(flavor = "multi_thread")]
async fn create_extension_through_a_proxy_reaches_the_other_replica() {
    let cluster = Cluster::start(2).await;
    let p1 = cluster.client(0).await;
    p1.batch_execute("CREATE EXTENSION hstore").await.unwrap();
    cluster.wait_converged().await;
    let r2 = cluster.replica(1).await;
    let n: i64 = r2
        .query_one(
            "SELECT count(*) FROM pg_extension WHERE extname = 'hstore'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}
