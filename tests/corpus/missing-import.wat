(module (import "env" "nope" (func)) (func (export "_start") call 0) (memory (export "memory") 1))
