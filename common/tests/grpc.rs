//! Every service is served through `serve_grpc`: health, reflection of the
//! whole contract, request ids answered in the metadata, graceful stop.

use modmesh_common::server::{channel, serve_grpc};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

#[tokio::test]
async fn health_reflection_request_ids_and_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // Any routes will do: the older reflection protocol stands in for a service.
    let routes = tonic::service::Routes::new(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(modmesh_proto::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .unwrap(),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_grpc(
        listener,
        routes,
        &["modmesh.v1.Storage"],
        "test",
        async {
            let _ = stop_rx.await;
        },
    ));

    let ch = channel(&url).unwrap();
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: "modmesh.v1.Storage".into(),
    });
    req.metadata_mut()
        .insert("x-request-id", "grpc-rid-1".parse().unwrap());
    let resp = HealthClient::new(ch.clone()).check(req).await.unwrap();
    assert_eq!(resp.metadata().get("x-request-id").unwrap(), "grpc-rid-1");
    assert_eq!(
        resp.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let unknown = HealthClient::new(ch.clone())
        .check(HealthCheckRequest {
            service: "modmesh.v1.Nothing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "modmesh.v1.Storage",
        "modmesh.v1.Lock",
        "modmesh.v1.Fetcher",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }

    stop_tx.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("server stops on shutdown")
        .unwrap()
        .unwrap();
}
