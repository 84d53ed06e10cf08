(module (memory (export "memory") 1) (data (i32.const 70000) "xx") (func (export "_start")))
