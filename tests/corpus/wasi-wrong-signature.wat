(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32))) (func (export "_start")) (memory (export "memory") 1))
