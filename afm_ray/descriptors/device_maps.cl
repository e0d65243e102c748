// vdW Spheres and Atomic Disks on an OpenCL device for afm_ray.descriptors.device_maps, with the
// definitions of afm_ray/descriptors/spheres.py and disks.py. Units: Å.
//
// One work item per pixel of one sample: global size (nx·ny rounded up, B); pix = ix·ny + iy, so
// out[b·nx·ny + pix] is the (B, nx, ny) C-order map and neighbouring work items write neighbouring
// addresses. Buffers (B samples, atoms of all samples concatenated):
//   atoms[i]      = (x, y, z, sphere radius, cone apex, cone width, unused, unused)   Å
//                   cone apex 0: the atom draws no Atomic Disk (hidden, or disks not asked for)
//   atom_range[b] = (first atom, atom count) of sample b
//   window        = (x_min, y_min, Δx, Δy): pixel (ix, iy) is centred on
//                   (x_min + (ix + ½)·Δx, y_min + (iy + ½)·Δy), the formula of ScanWindow.pixel_x/y
// An output pointer that is NULL is not computed.
//
// `real` is double when the host builds with -D DOUBLE_PRECISION (devices with cl_khr_fp64), else
// float. Near a sphere's rim sqrt(R² − d²) turns a rounding error ε of R² − d² into √ε: float
// (ε ~ 2e-6 Å²) can miss the float64 NumPy reference by up to ~1.5e-3 Å there, double does not.

// Without contraction into fma the arithmetic rounds like NumPy's, so a pixel on a rim falls on
// the same side of it.
#pragma OPENCL FP_CONTRACT OFF

#ifdef DOUBLE_PRECISION
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
typedef double real;
typedef double4 real4;
typedef double8 real8;
#else
typedef float real;
typedef float4 real4;
typedef float8 real8;
#endif

#define DISKS_MAX 0  // mode thesis: where cones overlap the larger value wins
#define DISKS_SUM 1  // mode ppafm: overlapping cones add up

__kernel void descriptor_maps(__global const real8 *atoms, __global const int2 *atom_range, const real4 window,
                              const int nx, const int ny, const real sphere_cut_depth, const int disk_mode,
                              __global float *spheres_out, __global float *disks_out)
{
    const int pix = get_global_id(0);
    const int b = get_global_id(1);
    if (pix >= nx * ny) return;
    const real px = window.s0 + ((real)(pix / ny) + 0.5f) * window.s2;
    const real py = window.s1 + ((real)(pix % ny) + 0.5f) * window.s3;
    const int2 range = atom_range[b];

    real surface = -INFINITY;  // highest sphere surface over the pixel; -inf where there is none
    real top = -INFINITY;      // top of the highest sphere, max(z + R), the same for every pixel
    real disk = (real)0;
    for (int i = range.x; i < range.x + range.y; ++i) {
        const real8 atom = atoms[i];
        const real dx = px - atom.s0;
        const real dy = py - atom.s1;
        const real dx2 = dx * dx;
        const real dy2 = dy * dy;
        if (spheres_out) {
            const real under = atom.s3 * atom.s3 - dx2 - dy2;
            if (under >= (real)0) surface = fmax(surface, atom.s2 + sqrt(under));
            top = fmax(top, atom.s2 + atom.s3);
        }
        if (disks_out && atom.s4 > (real)0) {
            const real cone = atom.s4 * fmax((real)1 - sqrt(dx2 + dy2) / atom.s5, (real)0);
            disk = disk_mode == DISKS_SUM ? disk + cone : fmax(disk, cone);
        }
    }

    const size_t out = (size_t)b * nx * ny + pix;
    // -inf (no sphere over the pixel) and surfaces deeper than the cut both clamp to 0
    if (spheres_out) spheres_out[out] = (float)clamp(surface - (top - sphere_cut_depth), (real)0, sphere_cut_depth);
    if (disks_out) disks_out[out] = (float)disk;
}
