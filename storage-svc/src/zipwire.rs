//! `Zip` written onto HTTP/2 without copying the zip: each piece the backend
//! read goes out as one gRPC message whose `data` field is that piece's own
//! buffer, behind a few bytes of framing. tonic's generated service would
//! first copy every piece into its encode buffer (prost's `bytes`
//! encoding): one memcpy of the whole zip per download, the largest single
//! cost of a warm zip in storage-svc. The bytes on the wire are exactly the
//! generated service's, so every gRPC client (tonic's, grpcurl) reads them.

use crate::server::pieces;
use crate::Storage;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http_body::Frame;
use modmesh_proto::pb::{self, zip_chunk};
use modmesh_proto::Coordinates;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;
use std::convert::Infallible;
use std::sync::Arc;
use tonic::Status;

/// The method's path.
pub(crate) const PATH: &str = "/modmesh.v1.Storage/Zip";

/// The largest request body accepted: one `Coordinates` message.
const MAX_REQUEST: usize = 64 << 10;

/// The `ZipChunk.data` field's number.
const DATA_FIELD: u32 = 2;

/// Answers one `Zip` call: a `ZipHeader`, the data messages, then the
/// trailers (`grpc-status` 0, or the error that ended the stream). An error
/// before the header is a trailers-only response, as tonic sends one.
pub(crate) async fn serve(
    storage: Arc<dyn Storage>,
    req: axum::extract::Request,
) -> Response<Body> {
    match start(storage, req).await {
        Ok(resp) => resp,
        Err(status) => status.into_http(),
    }
}

async fn start(
    storage: Arc<dyn Storage>,
    req: axum::extract::Request,
) -> Result<Response<Body>, Status> {
    let body = axum::body::to_bytes(req.into_body(), MAX_REQUEST)
        .await
        .map_err(|e| Status::invalid_argument(format!("reading the Zip request: {e}")))?;
    let c = decode_request(&body)?;
    let reader = storage.zip(&c).await?;
    let size = reader.size;
    let header = pb::ZipChunk {
        kind: Some(zip_chunk::Kind::Header(pb::ZipHeader { size })),
    };
    let head = Frame::data(message(&header.encode_to_vec()));
    // The data in messages of at most MAX_CHUNK, each a small prefix frame
    // and the piece itself; the trailers say how the stream ended.
    let data = pieces(reader, c.to_string())
        .map(Some)
        .chain(futures::stream::once(async { None }))
        .scan(false, |failed, item| {
            let frames = match item {
                Some(Ok(d)) => vec![Frame::data(data_prefix(d.len())), Frame::data(d)],
                Some(Err(e)) => {
                    *failed = true;
                    vec![trailers(e)]
                }
                None if *failed => Vec::new(),
                None => vec![trailers(Status::ok(""))],
            };
            std::future::ready(Some(frames))
        })
        .flat_map(futures::stream::iter);
    let frames = futures::stream::once(async move { head })
        .chain(data)
        .map(Ok::<_, Infallible>);
    let mut resp = Response::new(Body::new(http_body_util::StreamBody::new(frames)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    Ok(resp)
}

/// The `Coordinates` of a request body: one uncompressed gRPC message.
fn decode_request(body: &[u8]) -> Result<Coordinates, Status> {
    let Some((prefix, msg)) = body.split_first_chunk::<5>() else {
        return Err(Status::invalid_argument("Zip request without a message"));
    };
    if prefix[0] != 0 {
        return Err(Status::unimplemented(
            "compressed Zip requests are not accepted",
        ));
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if msg.len() != len {
        return Err(Status::invalid_argument(format!(
            "Zip request: a message of {len} bytes announced, {} sent",
            msg.len()
        )));
    }
    let pb = pb::Coordinates::decode(msg)
        .map_err(|e| Status::invalid_argument(format!("Zip request: {e}")))?;
    Ok(Coordinates::from_pb(&pb)?)
}

/// One whole gRPC message (uncompressed) around `encoded`.
fn message(encoded: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + encoded.len());
    b.put_u8(0);
    b.put_u32(encoded.len() as u32);
    b.put_slice(encoded);
    b.freeze()
}

/// What goes before `len` bytes of zip data to make them one gRPC message
/// `ZipChunk { data }`: the message prefix, the field's key and length.
fn data_prefix(len: usize) -> Bytes {
    let field = 1 + encoded_len_varint(len as u64) + len;
    let mut b = BytesMut::with_capacity(16);
    b.put_u8(0);
    b.put_u32(field as u32);
    encode_key(DATA_FIELD, WireType::LengthDelimited, &mut b);
    encode_varint(len as u64, &mut b);
    b.freeze()
}

/// The trailers that end the stream with `status`.
fn trailers(status: Status) -> Frame<Bytes> {
    let mut h = HeaderMap::new();
    if status.add_header(&mut h).is_err() {
        h.insert("grpc-status", HeaderValue::from_static("13"));
    }
    Frame::trailers(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_message_is_what_prost_encodes() {
        for len in [0usize, 1, 127, 128, 16_384, 1 << 20] {
            let d = Bytes::from(vec![9u8; len]);
            let want = message(
                &pb::ZipChunk {
                    kind: Some(zip_chunk::Kind::Data(d.clone())),
                }
                .encode_to_vec(),
            );
            let mut got = data_prefix(len).to_vec();
            got.extend_from_slice(&d);
            assert_eq!(got, want, "data message of {len} bytes");
        }
    }

    #[test]
    fn requests_are_decoded_or_refused() {
        let c = Coordinates::new("example.com/a", "v1.0.0").unwrap();
        let body = message(&c.to_pb().encode_to_vec());
        assert_eq!(decode_request(&body).unwrap(), c);
        let mut compressed = body.to_vec();
        compressed[0] = 1;
        assert_eq!(
            decode_request(&compressed).unwrap_err().code(),
            tonic::Code::Unimplemented
        );
        assert_eq!(
            decode_request(&body[..body.len() - 1]).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            decode_request(&[]).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
