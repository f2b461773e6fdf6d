//! Throwaway test certificates for the local mock (`kfr certs local`).
