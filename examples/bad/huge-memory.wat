;; Declares a linear memory whose minimum is 65536 pages (64 KiB each), the
;; full 4 GiB of a 32-bit memory. It is a valid module; only a host memory
;; limit stops it at instantiation. _start does nothing.
(module
  (memory (export "memory") 65536)
  (func (export "_start")))
