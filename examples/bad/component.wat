;; The smallest WebAssembly component. wat2wasm (wabt) cannot encode
;; components, so build.sh writes its 8-byte binary form directly:
;;   00 61 73 6d  magic "\0asm"
;;   0d 00 01 00  version 0x0d, layer 1 (component, not core module)
;; It exports nothing, so it is not a command: the shim must refuse it.
(component)
