(module (memory (export "memory") 1) (table 1 funcref) (type $t (func)) (func (export "_start") i32.const 0 call_indirect (type $t)))
