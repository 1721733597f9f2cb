//! The example server's gRPC service, `reqscope.example.v1.Users` (`users.proto`): the
//! messages, the server trait and the client, generated at build time.
#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::all)] // generated code

tonic::include_proto!("reqscope.example.v1");

/// The encoded `FileDescriptorSet` of `users.proto`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("users_descriptor");
