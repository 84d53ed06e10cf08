;; Imports a host function that no WASI host provides, so linking fails
;; before _start can run: the error must name env.nope.
(module
  (import "env" "nope" (func $nope))
  (memory (export "memory") 1)
  (func (export "_start")
    call $nope))
