//! The vhost-user-net backend: moves frames between a frontend's virtqueues and a transport.
