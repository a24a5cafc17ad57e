/* dr_instantiate.h — include the file named by DR_INSTANTIATE once per floating-point storage type.
 *
 * For each instance it defines DR_T (storage type), DR_LD(x)/DR_ST(x) (load to / store from the compute type),
 * DR_RT (compute type: float, or double for float64), DR_RS(name) (suffix of the compute type's shared math: _f,
 * _d) and DR_KS(name) (suffix of the instance: _f32, _f64, _f16, _bf16), and undefines them afterwards.
 * No include guard: include it once per file to instantiate. */
#ifndef DR_INSTANTIATE
#error "define DR_INSTANTIATE as the file to instantiate"
#endif

#define DR_T float
#define DR_LD(x) (x)
#define DR_ST(x) (x)
#define DR_RT float
#define DR_RS(name) name##_f
#define DR_KS(name) name##_f32
#include DR_INSTANTIATE
#undef DR_T
#undef DR_LD
#undef DR_ST
#undef DR_RT
#undef DR_RS
#undef DR_KS

#define DR_T double
#define DR_LD(x) (x)
#define DR_ST(x) (x)
#define DR_RT double
#define DR_RS(name) name##_d
#define DR_KS(name) name##_f64
#include DR_INSTANTIATE
#undef DR_T
#undef DR_LD
#undef DR_ST
#undef DR_RT
#undef DR_RS
#undef DR_KS

#define DR_T uint16_t
#define DR_LD(x) dr_f16_to_f32(x)
#define DR_ST(x) dr_f32_to_f16(x)
#define DR_RT float
#define DR_RS(name) name##_f
#define DR_KS(name) name##_f16
#include DR_INSTANTIATE
#undef DR_T
#undef DR_LD
#undef DR_ST
#undef DR_RT
#undef DR_RS
#undef DR_KS

#define DR_T uint16_t
#define DR_LD(x) dr_bf16_to_f32(x)
#define DR_ST(x) dr_f32_to_bf16(x)
#define DR_RT float
#define DR_RS(name) name##_f
#define DR_KS(name) name##_bf16
#include DR_INSTANTIATE
#undef DR_T
#undef DR_LD
#undef DR_ST
#undef DR_RT
#undef DR_RS
#undef DR_KS

#undef DR_INSTANTIATE
