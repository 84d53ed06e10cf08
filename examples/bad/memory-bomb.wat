;; Grows linear memory one page (64 KiB) at a time until memory.grow fails
;; (returns -1), then returns normally, so the exit code is 0.
;; Without a host memory limit it stops at the 4 GiB maximum of a 32-bit
;; memory; with one, it stops at the limit. Either way it must not trap,
;; and the host must not run out of memory. The pages are never touched.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (block $done
      (loop $grow
        (br_if $done
          (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
        (br $grow)))))
